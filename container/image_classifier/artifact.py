"""The model artifact: weights (a plain state_dict) and a JSON manifest.

Loading never unpickles arbitrary objects: torch.load(weights_only=True) and json.
"""
from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch
from torch import nn

from . import __version__, files
from .errors import described, first_line
from .paths import MANIFEST_FILE, WEIGHTS_FILE
from .models import build_for_inference
from .preprocessing import Preprocessing

FORMAT_VERSION = 1


class ArtifactError(Exception):
    """The model directory does not hold a model this code can load."""


def library_versions() -> dict[str, str]:
    import PIL

    from .vision import timm, torchvision
    return {"image_classifier": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "pillow": PIL.__version__}


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves half a file."""
    files.atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save(model_dir: Path, model: nn.Module, backbone: str, architecture: dict, class_names: list[str],
         class_folders: list[str],
         preprocessing: Preprocessing, hyperparameters: dict, metrics: dict, weights_source: str) -> None:
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save(state, model_dir / WEIGHTS_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "backbone": backbone,
        "architecture": architecture,  # timm's name and arguments: what serving builds
        "num_classes": len(class_names),
        "class_names": class_names,
        "class_folders": class_folders,
        "preprocessing": preprocessing.to_json(),
        "hyperparameters": hyperparameters,
        "metrics": metrics,
        "weights_source": weights_source,
        "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    files.atomic_write_text(model_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def read_manifest(model_dir: Path) -> dict:
    path = Path(model_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no {MANIFEST_FILE} in {model_dir}: not a model made by this image's train") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {manifest.get('format_version')!r}; "
                            f"this code reads {FORMAT_VERSION}")
    return manifest


def load(model_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The fine-tuned model in eval mode, and its manifest."""
    manifest = read_manifest(model_dir)
    names = len(manifest.get("class_names", []))
    if names != manifest.get("num_classes"):
        raise ArtifactError(f"{MANIFEST_FILE} names {names} classes for a model with "
                            f"{manifest.get('num_classes')} outputs")
    # Built with random weights, then overwritten. Building on the meta device and loading with
    # assign=True saved 0.26 s of resnet50's start but cost 20% of the forked workers' throughput.
    try:
        model = build_for_inference(manifest["backbone"], manifest["num_classes"],
                                    manifest.get("architecture"))
    except Exception as e:  # noqa: BLE001 - a name this timm does not know, or arguments it refuses
        named = manifest.get("architecture") or manifest.get("backbone")
        raise ArtifactError(f"{MANIFEST_FILE} names an architecture this image cannot build "
                            f"({named!r}: {first_line(e)})") from None
    try:
        state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"no {WEIGHTS_FILE} in {model_dir}") from None
    except Exception as e:  # noqa: BLE001  truncated, damaged or holding more than tensors
        raise ArtifactError(f"{WEIGHTS_FILE} cannot be read as saved weights "
                            f"({described(e)})") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{WEIGHTS_FILE} does not match the manifest: {first_line(e)}") from None
    from .models import to_device
    return to_device(model, torch.device(device)).eval(), manifest
