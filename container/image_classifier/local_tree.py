"""Lay out a SageMaker-style /opt/ml tree so `train` and `serve` run natively
(SAGEMAKER_BASE_DIR=<tree>): what SageMaker writes before it starts a training container.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .hyperparameters import to_sagemaker


def make(base: Path, channels: dict[str, Path], hyperparameters: dict | None = None,
         copy: bool = False) -> Path:
    """Config files plus one folder per channel (a symlink to the data unless copy=True)."""
    base = Path(base)
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(to_sagemaker(hyperparameters or {}), indent=2))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None"} for name in channels}, indent=2))
    # The real host name: SageMaker's 'algo-1' does not resolve outside its network.
    host = socket.gethostname()
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": host, "hosts": [host], "network_interface_name": "lo"}, indent=2))
    data = base / "input" / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, source in channels.items():
        target = data / name
        if target.is_symlink() or target.exists():
            continue
        if copy:
            import shutil
            shutil.copytree(source, target)
        else:
            os.symlink(Path(source).resolve(), target)
    for sub in ("model", "output", "checkpoints"):
        (base / sub).mkdir(exist_ok=True)
    return base
