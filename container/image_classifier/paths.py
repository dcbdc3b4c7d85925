"""Where SageMaker's container contract puts things, relocatable with SAGEMAKER_BASE_DIR.

SageMaker mounts everything under /opt/ml; setting SAGEMAKER_BASE_DIR to a local tree runs
the same programs on a machine without a container (sagemaker-training and
sagemaker-inference read the same variable).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import TrainingError


def base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def input_config_dir() -> Path:
    return base_dir() / "input" / "config"


def output_dir() -> Path:
    return base_dir() / "output"


def failure_file() -> Path:
    return output_dir() / "failure"


# The model artifact's two files (artifact.py writes and reads them; serving stages just these).
WEIGHTS_FILE = "model.pt"
MANIFEST_FILE = "model.json"  # not manifest.json: MMS takes that for its own archive format


# The folder an absolute feature-cache-dir may lie in, besides /opt/ml: set by whoever runs the job
# (the local tuner, for the cache its trials share), never by a hyperparameter.
FEATURE_CACHE_ROOT = "FEATURE_CACHE_ROOT"
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"  # TensorBoardOutputConfig's default LocalPath; launch sends it


def folder(base: Path, value: str, hyperparameter: str) -> Path:
    """A path hyperparameter's folder: `value` relative to `base` (or absolute), symlinks resolved."""
    try:
        return (base / value).resolve()
    except (ValueError, RuntimeError, OSError) as e:  # a NUL byte, a symlink loop
        raise TrainingError(f"hyperparameter '{hyperparameter}' is not a usable path: {value!r} ({e})") from None


def inside(base: Path, value: str, hyperparameter: str) -> Path:
    """folder(), refused unless it is `base` or below it, so that no value writes elsewhere."""
    base = base.resolve()
    path = folder(base, value, hyperparameter)
    if path != base and base not in path.parents:
        raise TrainingError(f"hyperparameter '{hyperparameter}' must be a folder inside {base} (relative to it); "
                            f"got {value!r}, which is {path}")
    return path
