"""The image's `train` program: SageMaker's training contract around `train.run`.

sagemaker-training reads /opt/ml/input/config (hyperparameters, channels, resources) and gives
the SM_* environment. We do not use its trainer.train() wrapper: it ends every run with its own
exit code and a traceback as the failure reason. Here a failure writes one human line to
/opt/ml/output/failure first, and a SIGTERM checkpoints and exits 143 so a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from . import hyperparameters, paths
from .errors import TrainingError

log = logging.getLogger("image_classifier")

EXIT_FAILED = 1
EXIT_INTERNAL = 2
EXIT_STOPPED = 143  # 128 + SIGTERM


def write_failure(reason: str) -> None:
    """First writer wins, like sagemaker-training's own write_failure_file."""
    line = " ".join(reason.split())[:1000]  # DescribeTrainingJob shows the first 1024 characters
    path = paths.failure_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(line + "\n")
    print(f"training failed: {line}", file=sys.stderr, flush=True)


def _check_config() -> None:
    config = paths.input_config_dir()
    for name in ("hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"):
        path = config / name
        if not path.exists():
            raise TrainingError(f"missing {path} (SageMaker writes it; for a local run see local_test/test_dir)")
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise TrainingError(f"{path} is not valid JSON: {e}") from None
    modes = {name: c.get("TrainingInputMode", "File")
             for name, c in json.loads((config / "inputdataconfig.json").read_text()).items()}
    piped = sorted(name for name, mode in modes.items() if mode == "Pipe")
    if piped:
        raise TrainingError(f"channel(s) {', '.join(piped)} use Pipe input mode; use File or FastFile")


def run_job() -> int:
    # Imported here so that `train --help` answers without loading torch.
    from sagemaker_training import environment, files
    from . import train

    stop = train.StopFlag().install()
    paths.output_dir().mkdir(parents=True, exist_ok=True)  # without it the toolkit cannot report
    try:
        _check_config()
        env = environment.Environment()
        os.environ.update(env.to_env_vars())  # SM_CHANNEL_*, SM_MODEL_DIR, SM_HPS, ... as in script mode
        raw = json.loads((paths.input_config_dir() / "hyperparameters.json").read_text())
        hp = hyperparameters.parse(raw)  # the raw strings: the toolkit's JSON-decoding would turn "2.5" epochs into 2
        channels = {name: Path(d) for name, d in env.channel_input_dirs.items()}
        model_dir = Path(os.environ["SM_MODEL_DIR"])
        print("hyperparameters: " + json.dumps(hyperparameters.as_dict(hp), sort_keys=True), flush=True)
        train.run(hp, channels, model_dir, paths.checkpoint_dir(), Path(os.environ["SM_OUTPUT_DATA_DIR"]), stop)
    except train.Stopped as e:
        log.warning("%s; rerun with the same checkpoint directory to resume", e)
        return EXIT_STOPPED
    except TrainingError as e:
        write_failure(str(e))
        return EXIT_FAILED
    except MemoryError:
        write_failure("out of memory: lower batch-size or num-workers, or use a larger instance")
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - the reason must reach the failure file
        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        write_failure(f"internal error: {type(e).__name__}: {first} (traceback in the job log)")
        return EXIT_INTERNAL
    files.write_success_file()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune an ImageNet CNN on ImageFolder channels under SageMaker's training contract.",
        epilog=(
            "Reads $SAGEMAKER_BASE_DIR (default /opt/ml): input/config/hyperparameters.json,\n"
            "inputdataconfig.json and resourceconfig.json; channels in input/data/<channel>/<class>/<image>:\n"
            "  train (required), valid (optional; else a stratified split of train),\n"
            "  test (optional; evaluated once at the end), pretrained (optional weights file).\n"
            "Writes the model to model/ (model.pt + model.json), checkpoints to checkpoints/\n"
            "($SM_CHECKPOINT_DIR overrides), output/data/metrics.json, and on failure a one-line reason\n"
            "to output/failure. Exit codes: 0 done, 1 failed (reason in output/failure), 2 internal\n"
            "error, 143 stopped by SIGTERM after saving a checkpoint (a rerun resumes).\n\n"
            "Hyperparameters (all passed as strings):\n" + hyperparameters.help_text()))
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return run_job()


if __name__ == "__main__":
    sys.exit(main())
