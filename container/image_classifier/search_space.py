"""The hyperparameter search space, shared by launch/tune.py (SageMaker's tuner) and the local
tuner. Imports nothing heavy."""
from __future__ import annotations

import dataclasses

from .hyperparameters import BY_NAME


@dataclasses.dataclass(frozen=True)
class Continuous:
    low: float
    high: float
    scaling: str = "Auto"  # SageMaker's ScalingType: Auto, Linear, Logarithmic, ReverseLogarithmic


@dataclasses.dataclass(frozen=True)
class Integer:
    low: int
    high: int
    scaling: str = "Auto"


@dataclasses.dataclass(frozen=True)
class Categorical:
    values: tuple


SEARCH_SPACE = {
    "lr": Continuous(1e-4, 3e-2, "Logarithmic"),
    "batch-size": Categorical((16, 32, 64)),
    "epochs": Integer(2, 8),
    "weight-decay": Continuous(1e-6, 1e-2, "Logarithmic"),
}
# The fine-tuning recipe's options on top (launch setting search_preset = "recipe"). Each works with
# every trainable setting (with cached features the augmentation shapes the cached views); mixup,
# cutmix and layer-decay need trainable=last-stage or all, so they are tuned by naming them in a
# config file's [search_space] table.
RECIPE_SPACE = {
    **SEARCH_SPACE,
    "label-smoothing": Continuous(0.0, 0.2),
    "augment": Categorical(("none", "trivialaugment", "randaugment")),
    "random-erasing": Continuous(0.0, 0.4),
    "ema-decay": Categorical((0.0, 0.99, 0.999)),
}
PRESETS = {"default": SEARCH_SPACE, "recipe": RECIPE_SPACE}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown search preset {name!r}: one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def validate(space: dict) -> dict:
    """Every name is a hyperparameter and every bound or value is one the container accepts."""
    for name, rng in space.items():
        if name not in BY_NAME:
            raise ValueError(f"search space names unknown hyperparameter {name!r}")
        values = rng.values if isinstance(rng, Categorical) else (rng.low, rng.high)
        for value in values:
            BY_NAME[name].parse(str(value))
        if not isinstance(rng, Categorical) and not rng.low < rng.high:
            raise ValueError(f"search space {name}: low {rng.low} must be below high {rng.high}")
    return space


def as_grid(space: dict, points: int = 3) -> dict:
    """Grid search takes categorical values only: continuous and integer ranges become `points`
    values spread over the range (geometrically for logarithmic scaling)."""
    import math
    grid = {}
    for name, rng in space.items():
        if isinstance(rng, Categorical):
            grid[name] = rng
            continue
        if rng.scaling == "Logarithmic":
            lo, hi = math.log(rng.low), math.log(rng.high)
            values = [math.exp(lo + (hi - lo) * i / (points - 1)) for i in range(points)]
        else:
            values = [rng.low + (rng.high - rng.low) * i / (points - 1) for i in range(points)]
        if isinstance(rng, Integer):
            values = sorted({int(round(v)) for v in values})
        else:
            values = [float(f"{v:.3g}") for v in values]
        grid[name] = Categorical(tuple(values))
    return grid


GRID_LIMIT = 750  # SageMaker: training jobs per tuning job (dg/automatic-model-tuning-limits.html)
RESOURCE = "epochs"  # what Hyperband gives trials more or less of


def grid_points(grid: dict) -> int:
    """How many training jobs a grid search runs: every combination of the categorical values."""
    import math
    return math.prod(len(rng.values) for rng in grid.values())


def hyperband(space: dict, static: dict) -> tuple[dict, int, int]:
    """Hyperband's resource is `epochs`, never a tuned value: (the space without it, min and max
    resource). Its range (or the static value, else the default) bounds the resource; every trial
    is set to the max and Hyperband stops the ones that do not earn it."""
    rng = space.get(RESOURCE)
    if isinstance(rng, Categorical):
        low, high = min(rng.values), max(rng.values)
    elif rng is not None:
        low, high = rng.low, rng.high
    else:
        high = int(static.get(RESOURCE, BY_NAME[RESOURCE].default))
        low = 1
    return {n: r for n, r in space.items() if n != RESOURCE}, int(low), int(high)


def from_config(table: dict) -> dict:
    """Ranges from a config file: {"lr": {"min": 1e-4, "max": 1e-2, "scaling": "Logarithmic"},
    "batch-size": {"values": [16, 32]}, "epochs": {"min": 2, "max": 5, "type": "integer"}}."""
    space = {}
    for name, spec in table.items():
        if "values" in spec:
            space[name] = Categorical(tuple(spec["values"]))
        elif spec.get("type", "continuous") == "integer":
            space[name] = Integer(int(spec["min"]), int(spec["max"]), spec.get("scaling", "Auto"))
        else:
            space[name] = Continuous(float(spec["min"]), float(spec["max"]), spec.get("scaling", "Auto"))
    return validate(space)


for _space in PRESETS.values():
    validate(_space)
