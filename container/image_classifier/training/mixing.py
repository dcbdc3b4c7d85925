"""Mixup and CutMix of training batches (torchvision.transforms.v2, as torchvision's classification
reference uses them): which alphas a job runs with, and the batch transform. Labels come out as
class probabilities, which nn.CrossEntropyLoss takes as they are (label smoothing included)."""
from __future__ import annotations

import logging

import torch

from ..errors import TrainingError
from ..hyperparameters import AUTO, MIX_DEFAULTS, MIX_MIN_IMAGES

log = logging.getLogger(__name__)


def alphas(mixup: float | str, cutmix: float | str, train_images: int, cached_features: bool) -> dict[str, float]:
    """{'mixup': alpha, 'cutmix': alpha}, 0 where off. 'auto' is on with MIX_MIN_IMAGES training images
    or more (BiT's rule); mixing needs pixels, so cached features turn 'auto' off and refuse a number."""
    asked = {"mixup": mixup, "cutmix": cutmix}
    if cached_features:
        explicit = [f"{name}={value:g}" for name, value in asked.items() if value != AUTO and value > 0]
        if explicit:
            raise TrainingError(f"{' and '.join(explicit)} mixes images, but trainable=head with cache-features=true "
                                "trains the head on cached features: set cache-features=false to mix, or "
                                f"{'/'.join(n for n in asked)}=0")
        return {name: 0.0 for name in asked}
    many = train_images >= MIX_MIN_IMAGES
    chosen = {name: (MIX_DEFAULTS[name] if many else 0.0) if value == AUTO else float(value)
              for name, value in asked.items()}
    why = f" (auto: {train_images} training images, {'>=' if many else '<'} {MIX_MIN_IMAGES})" \
        if AUTO in asked.values() else ""
    if any(chosen.values()):
        log.info("mixing training batches: mixup %g, cutmix %g%s", chosen["mixup"], chosen["cutmix"], why)
    elif why:
        log.info("mixup and cutmix off%s", why)
    return chosen


class Mixing:
    """The batch transform: (images [B,C,H,W], labels [B]) -> (mixed images, label probabilities [B,K])."""

    def __init__(self, chosen: dict[str, float], num_classes: int):
        from .. import vision  # noqa: F401 - torchvision's ops first (vision.py)
        from torchvision.transforms import v2
        made = ([v2.MixUp(alpha=chosen["mixup"], num_classes=num_classes)] if chosen["mixup"] > 0 else []) + \
               ([v2.CutMix(alpha=chosen["cutmix"], num_classes=num_classes)] if chosen["cutmix"] > 0 else [])
        if not made:
            raise ValueError("Mixing needs mixup or cutmix on")
        self._mix = made[0] if len(made) == 1 else v2.RandomChoice(made)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(images, labels)


def create(chosen: dict[str, float], num_classes: int) -> Mixing | None:
    return Mixing(chosen, num_classes) if any(chosen.values()) else None
