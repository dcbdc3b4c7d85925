"""Training state saved every epoch (and on SIGTERM) so that a rerun resumes where it stopped.

SageMaker syncs the checkpoint directory with checkpoint_s3_uri, which is what managed spot
training restores. The files hold only tensors and plain values: they load with
torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from ..artifact import atomic_save
from ..files import atomic_write_text
from ..errors import TrainingError
from ..hyperparameters import BY_NAME

log = logging.getLogger(__name__)

STATE_FILE = "checkpoint.pt"
BEST_FILE = "best_model.pt"
WRITTEN_FILE = "written.json"  # when the state was last saved: S3 copies do not keep file times
# A resumed job must be the same job: these settings change what the saved state means.
MUST_MATCH = ("backbone", "trainable", "image-size", "batch-size", "optimizer", "seed", "layer-decay", "ema-decay")


def save(directory: Path, state: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save(state, directory / STATE_FILE)
    atomic_write_text(directory / WRITTEN_FILE, json.dumps({"unix_seconds": time.time()}) + "\n")


# --- a tuning job's trials, which share one checkpoint S3 prefix (checkpoint-per-job) ---------------
# SageMaker copies everything under the prefix into every new trial, and deletes in S3 what a job
# deletes in its checkpoint folder (docs: model-checkpoints). So a trial that ends for good removes
# its own folder, and old folders of trials that can no longer be resumed are removed by the next
# trial: a trial downloads its own state plus the folders of trials running or stopped within
# `lifetime` (the tuner's MaxWaitTimeInSeconds: no job outlives it).
def remove_trial(directory: Path) -> None:
    """A finished (or failed) trial's checkpoint folder: no run will resume from it."""
    if directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)
        log.info("removed this trial's checkpoints (%s): it will not be resumed", directory)


def prune_trials(root: Path, own: str, lifetime_seconds: float) -> list[str]:
    """Remove the folders of other trials whose state was last saved over `lifetime_seconds` ago;
    folders without a WRITTEN_FILE are not a trial's and are left alone. Returns their names."""
    if not root.is_dir():
        return []
    removed, now = [], time.time()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != own):
        try:
            written = json.loads((folder / WRITTEN_FILE).read_text())["unix_seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if now - float(written) > lifetime_seconds:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    if removed:
        log.info("removed the checkpoints of %d earlier trial(s) that can no longer be resumed: %s", len(removed),
                 ", ".join(removed))
    return removed


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
    # A hyperparameter newer than the checkpoint had its default then.
    defaults = {k: BY_NAME[k].default for k in MUST_MATCH}
    saved, now = {**defaults, **json.loads(state["hyperparameters"])}, {**defaults, **hyperparameters}
    changed = [k for k in MUST_MATCH if saved[k] != now[k]]
    if changed:
        detail = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise TrainingError(f"checkpoint in {directory} belongs to another configuration ({detail}); "
                            "use a new checkpoint directory")
    if json.loads(state["class_folders"]) != class_folders:
        raise TrainingError(f"checkpoint in {directory} was made for other classes; use a new checkpoint directory")
    return state
