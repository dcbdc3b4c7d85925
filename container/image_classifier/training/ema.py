"""An exponential moving average of the trained weights (timm's ModelEmaV3, behind this module).

It averages what a step trains (the model, or its head on cached features), updated after every
optimizer step with the run's global step, so that timm's warm-up (decay 1 - (1 + step)^-2/3, up
to `decay`) treats a resumed run as the run it continues. Every rank of a data-parallel job holds
the same weights after a step, so each keeps its own average and they stay equal with no exchange.
"""
from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    def __init__(self, net: nn.Module, decay: float):
        from ..vision import timm
        self._ema = timm.utils.ModelEmaV3(net, decay=decay, use_warmup=True)

    @property
    def net(self) -> nn.Module:
        """The averaged copy of the trained module, in eval mode, for validation."""
        return self._ema.module

    def update(self, net: nn.Module, step: int) -> None:
        self._ema.update(net, step=step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._ema.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._ema.module.load_state_dict(state)

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's state_dict with the averaged tensors in place of the trained ones
        (a head on cached features holds its tensors under the model's own names)."""
        return {**model.state_dict(), **self.state_dict()}


def create(net: nn.Module, decay: float) -> WeightAverage | None:
    return WeightAverage(net, decay) if decay > 0 else None
