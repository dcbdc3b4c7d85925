"""Scalars for SageMaker's managed TensorBoard: losses, accuracies, learning rate and throughput per
epoch, and the held-out channels' evaluation at the end.

They go where TensorBoardOutputConfig's LocalPath says (SageMaker writes it to
input/config/tensorboardoutputconfig.json), by default /opt/ml/output/tensorboard; SageMaker
uploads that folder to the config's S3OutputPath while the job runs, and `launch.train` sets it.
tensorboardX writes the event files: pure Python over protobuf, which the image has already (for
smdebug), where torch.utils.tensorboard would need the whole tensorboard package.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import paths

log = logging.getLogger(__name__)

CONFIG_FILE = "tensorboardoutputconfig.json"
EPOCH_SCALARS = {  # tag -> key of a history row (epochs.end_epoch)
    "loss/train": "train_loss", "loss/valid": "valid_loss",
    "accuracy/train": "train_acc", "accuracy/valid": "valid_acc",
    "throughput/train_images_per_second": "images_per_second", "time/epoch_seconds": "seconds",
}
FINAL_SCALARS = {  # tag suffix -> key of evaluation.summarize's result
    "top1_accuracy": "top1_accuracy", "top5_accuracy": "top5_accuracy", "macro_f1": "macro_f1",
    "expected_calibration_error": "expected_calibration_error",
}


def directory() -> Path:
    """TensorBoardOutputConfig's LocalPath, else SageMaker's default for it (paths.TENSORBOARD_LOCAL_PATH, under
    SAGEMAKER_BASE_DIR)."""
    config = paths.input_config_dir() / CONFIG_FILE
    try:
        local = json.loads(config.read_text()).get("LocalPath")
    except (OSError, ValueError, AttributeError):
        local = None
    return Path(local) if local else paths.output_dir() / "tensorboard"


class Scalars:
    """A writer that does nothing when given no folder (a process that is not the leader)."""

    def __init__(self, folder: Path | None):
        self.writer = None
        if folder is not None:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(str(folder), flush_secs=10)

    def epoch(self, row: dict, lr: float) -> None:
        if self.writer is None:
            return
        for tag, key in EPOCH_SCALARS.items():
            self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.add_scalar("lr", lr, row["epoch"])
        self.writer.flush()  # an epoch is minutes: SageMaker uploads what is on disk

    def evaluation(self, channel: str, summary: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, key in FINAL_SCALARS.items():
            self.writer.add_scalar(f"evaluation_{channel}/{tag}", summary[key], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
