"""Training state saved every epoch (and on SIGTERM) so that a rerun resumes where it stopped.

SageMaker syncs the checkpoint directory with checkpoint_s3_uri, which is what managed spot
training restores. The files hold only tensors and plain values: they load with
torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .artifact import atomic_save
from .errors import TrainingError

log = logging.getLogger(__name__)

STATE_FILE = "checkpoint.pt"
BEST_FILE = "best_model.pt"
# A resumed job must be the same job: these settings change what the saved state means.
MUST_MATCH = ("backbone", "trainable", "image-size", "batch-size", "optimizer", "seed")


def save(directory: Path, state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save(state, directory / STATE_FILE)


def save_best(directory: Path, model_state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save(model_state, directory / BEST_FILE)


def load_best(directory: Path) -> dict | None:
    path = directory / BEST_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def load(directory: Path, hyperparameters: dict, class_folders: list[str]) -> dict | None:
    """The saved state, or None for a fresh start; refuses a checkpoint of a different job."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
        raise TrainingError(f"checkpoint {path} cannot be read ({type(e).__name__}); "
                            "delete it or use another checkpoint directory") from None
    saved = json.loads(state["hyperparameters"])
    changed = [k for k in MUST_MATCH if saved.get(k) != hyperparameters.get(k)]
    if changed:
        detail = ", ".join(f"{k} {saved.get(k)!r} -> {hyperparameters.get(k)!r}" for k in changed)
        raise TrainingError(f"checkpoint in {directory} belongs to another configuration ({detail}); "
                            "use a new checkpoint directory")
    if json.loads(state["class_folders"]) != class_folders:
        raise TrainingError(f"checkpoint in {directory} was made for other classes; use a new checkpoint directory")
    return state
