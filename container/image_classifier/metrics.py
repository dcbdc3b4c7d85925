"""What `train` reports and the launch side asks for: the metric lines `train` prints and the
regexes SageMaker reads them with, and the Debugger collections its hook saves.

One source of truth: the launch side passes METRIC_DEFINITIONS to Estimator and
HyperparameterTuner (tests prove the printed lines match them) and DEBUG_COLLECTIONS to
DebuggerHookConfig. Imports nothing heavy.
"""
from __future__ import annotations

import re

DEBUG_COLLECTIONS = ("losses", "weights", "biases", "gradients")  # smdebug's built-in collections

_NUM = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"train_loss={_NUM}"},
    {"Name": "train:accuracy", "Regex": rf"train_acc={_NUM}"},
    {"Name": "valid:loss", "Regex": rf"valid_loss={_NUM}"},
    {"Name": "valid:accuracy", "Regex": rf"valid_acc={_NUM}"},
    # The averaged weights' (ema-decay), on the epoch line too; named so that no other regex matches them.
    {"Name": "valid:ema_loss", "Regex": rf"ema_loss={_NUM}"},
    {"Name": "valid:ema_accuracy", "Regex": rf"ema_acc={_NUM}"},
    {"Name": "epoch:seconds", "Regex": rf"epoch_seconds={_NUM}"},
    {"Name": "train:images_per_second", "Regex": rf"images_per_second={_NUM}"},
    {"Name": "test:loss", "Regex": rf"test_loss={_NUM}"},
    {"Name": "test:accuracy", "Regex": rf"test_acc={_NUM}"},
] + [  # the held-out channels' evaluation (evaluation_line)
    {"Name": f"{channel}:{name}", "Regex": rf"{channel}_{key}={_NUM}"}
    for channel in ("valid", "test")
    for name, key in (("top5_accuracy", "top5_acc"), ("accuracy_ci95_low", "acc_low"),
                      ("accuracy_ci95_high", "acc_high"), ("macro_f1", "macro_f1"),
                      ("calibration_error", "ece"))
]

# What the tuner maximizes. Validation, never test: the test set is never used for selection.
OBJECTIVE_METRIC = "valid:accuracy"
OBJECTIVE_TYPE = "Maximize"


def epoch_line(epoch: int, epochs: int, train_loss: float, train_acc: float, valid_loss: float,
               valid_acc: float, seconds: float, images_per_second: float, lr: float,
               ema_loss: float | None = None, ema_acc: float | None = None) -> str:
    averaged = f" ema_loss={ema_loss:.4f} ema_acc={ema_acc:.4f}" if ema_acc is not None else ""
    return (f"epoch={epoch}/{epochs} train_loss={train_loss:.4f} train_acc={train_acc:.4f} "
            f"valid_loss={valid_loss:.4f} valid_acc={valid_acc:.4f} epoch_seconds={seconds:.2f} "
            f"images_per_second={images_per_second:.1f} lr={lr:.3g}{averaged}")


def selected_line(epoch: int, valid_loss: float, valid_acc: float) -> str:
    """Printed last of the valid lines, for the model the job saves: SageMaker's tuner takes a
    job's *last* valid:accuracy as its objective value, so that value is the saved model's."""
    return f"selected epoch={epoch} valid_loss={valid_loss:.4f} valid_acc={valid_acc:.4f}"


def test_line(loss: float, acc: float) -> str:
    return f"final test_loss={loss:.4f} test_acc={acc:.4f}"


def evaluation_line(channel: str, summary: dict) -> str:
    """The headline figures of evaluation.summarize for one channel (valid or test)."""
    low, high = summary["top1_accuracy_ci95"]
    return (f"evaluation {channel}_top5_acc={summary['top5_accuracy']:.4f} {channel}_acc_low={low:.4f} "
            f"{channel}_acc_high={high:.4f} {channel}_macro_f1={summary['macro_f1']:.4f} "
            f"{channel}_ece={summary['expected_calibration_error']:.4f} images={summary['images']}")


def parse(log_text: str) -> dict[str, list[float]]:
    """Read metrics out of a job log the way SageMaker does (used by the local tuner). A tuning job's
    objective value is the last value of its metric (objective_value)."""
    return {d["Name"]: [float(m) for m in re.findall(d["Regex"], log_text)] for d in METRIC_DEFINITIONS}


def objective_value(log_text: str, metric: str = OBJECTIVE_METRIC) -> float | None:
    """What SageMaker's tuner scores a training job by: the last value its regex matched."""
    values = parse(log_text)[metric]
    return values[-1] if values else None
