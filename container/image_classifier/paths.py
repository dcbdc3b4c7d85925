"""Where SageMaker's container contract puts things, relocatable with SAGEMAKER_BASE_DIR.

SageMaker mounts everything under /opt/ml; setting SAGEMAKER_BASE_DIR to a local tree runs
the same programs on a machine without a container (sagemaker-training and
sagemaker-inference read the same variable).
"""
from __future__ import annotations

import os
from pathlib import Path


def base_dir() -> Path:
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def input_config_dir() -> Path:
    return base_dir() / "input" / "config"


def output_dir() -> Path:
    return base_dir() / "output"


def failure_file() -> Path:
    return output_dir() / "failure"


def model_dir() -> Path:
    return Path(os.environ.get("SM_MODEL_DIR", base_dir() / "model"))


def checkpoint_dir() -> Path:
    # SageMaker syncs /opt/ml/checkpoints with checkpoint_s3_uri (managed spot training).
    return Path(os.environ.get("SM_CHECKPOINT_DIR", base_dir() / "checkpoints"))
