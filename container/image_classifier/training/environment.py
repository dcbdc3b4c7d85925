"""Every environment variable `train` reads, and nothing else: the training modules ask here
instead of reading os.environ (the serving side's twin is serving/environment.py). Torch-free, so
that `train --help` answers at once.

VARIABLES documents them: `train --help` lists it and docs/TRAINING.md carries its table (`python
-m image_classifier.training.environment` prints it; a test keeps the two the same). `locations`
resolves, once per job, every folder the run writes to; the job hands them to `train.run`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from .. import paths, variables
from ..paths import FEATURE_CACHE_ROOT
from ..errors import TrainingError
from ..variables import Variable
from .tensorboard import directory as tensorboard_directory

PROCESSES_PER_HOST = "TRAIN_PROCESSES_PER_HOST"
STOPPED_MARKER = "TRAIN_STOPPED_MARKER"  # set by the launcher for torchrun's workers, never by a user
DEFAULT_PORT = 7777  # SageMaker's PyTorch containers use the same
DEBUGGER_CONFIG = Path("/opt/ml/input/config/debughookconfig.json")  # fixed: ignores SAGEMAKER_BASE_DIR


VARIABLES = (
    Variable("SAGEMAKER_BASE_DIR", "`/opt/ml`",
             "the tree SageMaker mounts: input/config, input/data/<channel>, model, output, checkpoints (a local "
             "run points it at a folder; sagemaker-training reads it too)"),
    Variable("SM_CHECKPOINT_DIR", "`$SAGEMAKER_BASE_DIR/checkpoints`",
             "where checkpoints go (SageMaker syncs /opt/ml/checkpoints with the job's checkpoint S3 URI)"),
    Variable("TRAINING_JOB_NAME", "set by SageMaker",
             "the job's name: with `checkpoint-per-job`, the folder of its own checkpoints"),
    Variable(PROCESSES_PER_HOST, "the host's GPUs, else `1`",
             "training processes on each host (torchrun starts them when more than one)"),
    Variable("MASTER_ADDR", "the first host of resourceconfig.json", "the leader's address"),
    Variable("MASTER_PORT", f"`{DEFAULT_PORT}`", "the leader's port (1 to 65535)"),
    Variable("RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, TORCHELASTIC_RUN_ID", "set by torchrun",
             "a worker's place in the job, read in the processes torchrun starts"),
    Variable("SMDEBUG_CONFIG_FILE_PATH", f"`{DEBUGGER_CONFIG}`",
             "SageMaker Debugger's hook configuration (present when the job has Debugger on)"),
    Variable(FEATURE_CACHE_ROOT, "`$SAGEMAKER_BASE_DIR`",
             "the folder an absolute `feature-cache-dir` must lie inside (the local tuner's cache shared by its "
             "trials)"),
    Variable("HF_HUB_OFFLINE", "unset", "`1`: a backbone's weights come from the Hugging Face Hub cache only, never "
             "the network (read by huggingface_hub, for timm)"),
    Variable("HF_HOME, HF_HUB_CACHE", "`~/.cache/huggingface`, `$HF_HOME/hub`",
             "the Hugging Face Hub cache a backbone's weights are downloaded into and read from"),
    Variable("TORCH_HOME", "`~/.cache/torch`", "the cache of downloads from a URL (torchvision's ResNet weights)"),
    Variable(STOPPED_MARKER, "set by `train` for its torchrun workers",
             "a file a worker creates when it stops on SIGTERM, so that its launcher exits 143 too"),
)


def _get(name: str) -> str | None:
    return os.environ.get(name) or None


# --- where things are -----------------------------------------------------------------------------
def checkpoint_root() -> Path:
    return Path(_get("SM_CHECKPOINT_DIR") or paths.base_dir() / "checkpoints")


def job_name() -> str | None:
    return _get("TRAINING_JOB_NAME")


def feature_cache_root() -> Path:
    return Path(_get(FEATURE_CACHE_ROOT) or paths.base_dir())


def debugger_config() -> Path:
    return Path(_get("SMDEBUG_CONFIG_FILE_PATH") or DEBUGGER_CONFIG)


@dataclass(frozen=True)
class Locations:
    """Every folder a run reads settings from or writes to, resolved once."""
    model: Path  # the artifact: model.pt + model.json
    output_data: Path  # metrics.json, the evaluation, the report, the profile
    checkpoints: Path  # this job's (a trial's own folder with checkpoint-per-job)
    trial: str | None = None  # the job name checkpoints are kept under, with checkpoint-per-job
    debug: Path | None = None  # debug-dir: Debugger's tensors without SageMaker's Debugger
    feature_cache: Path | None = None  # feature-cache-dir; None: in memory
    tensorboard: Path | None = None  # TensorBoard's scalars (the leader's)


def checkpoints(checkpoint_per_job: bool) -> tuple[Path, str | None]:
    """This job's checkpoint folder, and the trial it is named after with checkpoint-per-job."""
    root, trial = checkpoint_root(), checkpoint_per_job and job_name() or None
    return (paths.inside(root, trial, "checkpoint-per-job") if trial else root), trial


def locations(model: Path, output_data: Path, checkpoint_per_job: bool, debug_dir: str,
              feature_cache_dir: str) -> Locations:
    """The folders the path hyperparameters name, checked before anything is written. debug-dir is
    inside /opt/ml/output; so is a relative feature-cache-dir, while an absolute one is a folder kept
    across jobs: inside /opt/ml (e.g. /opt/ml/checkpoints/features, which SageMaker syncs to S3) or
    inside $FEATURE_CACHE_ROOT."""
    folder, trial = checkpoints(checkpoint_per_job)
    debug = paths.inside(paths.output_dir(), debug_dir, "debug-dir") if debug_dir else None
    cache = None
    if Path(feature_cache_dir).is_absolute():
        cache = paths.inside(feature_cache_root(), feature_cache_dir, "feature-cache-dir")
    elif feature_cache_dir:
        cache = paths.inside(paths.output_dir(), feature_cache_dir, "feature-cache-dir")
    return Locations(model=Path(model), output_data=Path(output_data), checkpoints=folder, trial=trial,
                     debug=debug, feature_cache=cache, tensorboard=tensorboard_directory())


# --- the job's processes --------------------------------------------------------------------------
def processes_per_host(gpus: int) -> int:
    value = _get(PROCESSES_PER_HOST)
    if not value:
        return max(1, gpus)
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise TrainingError(f"{PROCESSES_PER_HOST} must be a whole number >= 1; got {value!r}")
    return count


def leader(first_host: str) -> tuple[str, int]:
    """(address, port) of the leader: MASTER_ADDR/MASTER_PORT, else the first host and port 7777."""
    port = _get("MASTER_PORT")
    if port is not None and (not port.isdigit() or not 0 < int(port) < 65536):
        raise TrainingError(f"MASTER_PORT must be a port number; got {port!r}")
    return _get("MASTER_ADDR") or first_host, int(port) if port else DEFAULT_PORT


def torchrun_place() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) in a worker torchrun started, else None."""
    if "RANK" in os.environ and "LOCAL_RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    return None


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def torchrun_agent() -> bool:
    """torchrun's agent holds the rendezvous store."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def processes_on_this_host() -> int:
    return int(_get("LOCAL_WORLD_SIZE") or 1)


def stopped_marker() -> Path | None:
    value = _get(STOPPED_MARKER)
    return Path(value) if value else None


# --- what `train` sets, for the toolkit, torch and smdebug -----------------------------------------
def export(values: dict[str, str]) -> None:
    os.environ.update(values)


def export_default(name: str, value: str) -> None:
    os.environ.setdefault(name, value)


@contextlib.contextmanager
def exported(values: dict[str, str]):
    """`values` set while the block runs, the variables as they were afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- documentation ----------------------------------------------------------------------------------
def help_text() -> str:
    return variables.help_text(VARIABLES)


def markdown_table() -> str:
    return variables.markdown_table(VARIABLES)


if __name__ == "__main__":
    print(markdown_table(), end="")
