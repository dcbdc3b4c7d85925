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
import signal
import subprocess
import sys
import traceback
from pathlib import Path

from .. import hyperparameters, paths
from ..errors import TrainingError, described
from . import environment

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


INPUT_MODES = ("File", "FastFile", "Pipe")


def _check_config() -> tuple[dict, dict]:
    """Check the shape of SageMaker's three config files, so that a malformed one fails the job
    with its reason (not inside the toolkit); returns the hyperparameters (all strings) and the
    resources."""
    hps = _read_config("hyperparameters.json")
    _expect(hps, dict, "hyperparameters.json", "the file", "an object of names to string values")
    for name, value in hps.items():
        _expect(value, str, "hyperparameters.json", f"hyperparameter '{name}'", "a string, as SageMaker sends it")
    channels = _read_config("inputdataconfig.json")
    _expect(channels, dict, "inputdataconfig.json", "the file", "an object of channel names to channel settings")
    for name, channel in channels.items():
        _expect(channel, dict, "inputdataconfig.json", f"channel '{name}'", "an object")
        mode = channel.get("TrainingInputMode", "File")
        if mode not in INPUT_MODES:
            raise TrainingError(f"inputdataconfig.json: channel '{name}' has TrainingInputMode {mode!r}; "
                                f"expected one of {', '.join(INPUT_MODES)}")
    piped = sorted(name for name, c in channels.items() if c.get("TrainingInputMode") == "Pipe")
    if piped:
        raise TrainingError(f"channel(s) {', '.join(piped)} use Pipe input mode; use File or FastFile")
    resources = _read_config("resourceconfig.json")
    _check_resources(resources)
    return hps, resources


def _check_resources(resources) -> None:
    """What sagemaker-training reads from resourceconfig.json."""
    where = "resourceconfig.json"
    _expect(resources, dict, where, "the file", "an object")
    _expect(resources.get("current_host"), str, where, "current_host", "a string")
    _expect(resources.get("hosts"), list, where, "hosts", "an array of host names")
    for host in resources["hosts"]:
        _expect(host, str, where, "each of hosts", "a string")
    if len(set(resources["hosts"])) != len(resources["hosts"]):
        raise TrainingError(f"{where}: hosts names a host twice: {resources['hosts']}")
    if resources["current_host"] not in resources["hosts"]:
        raise TrainingError(f"{where}: current_host {resources['current_host']!r} is not in hosts")
    for key in ("network_interface_name", "current_instance_type", "current_group_name"):
        if key in resources:
            _expect(resources[key], str, where, key, "a string")
    _expect(resources.get("instance_groups", []), list, where, "instance_groups", "an array")
    for group in resources.get("instance_groups", []):
        _expect(group, dict, where, "each of instance_groups", "an object")
        _expect(group.get("instance_group_name"), str, where, "instance_group_name", "a string")
        _expect(group.get("hosts"), list, where, "an instance group's hosts", "an array of host names")


def _read_config(name: str):
    path = paths.input_config_dir() / name
    if not path.exists():
        raise TrainingError(f"missing {path} (SageMaker writes it; for a local run see local_test/test_dir)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainingError(f"{path} is not valid JSON: {e}") from None


def _expect(value, kind: type, where: str, what: str, expected: str) -> None:
    if not isinstance(value, kind):
        raise TrainingError(f"{where}: {what} must be {expected}; got {_describe(value)}")


def _describe(value) -> str:
    """A JSON value in a few words: its kind, and the value itself if it is short."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    kind = kinds.get(type(value), "a number")
    text = json.dumps(value)
    return f"{kind} {text}" if len(text) <= 40 and kind not in ("an object", "null") else kind


def run_job() -> int:
    # Imported here so that `train --help` answers without loading torch.
    from . import distributed, stopping

    stop = stopping.StopFlag().install()
    paths.output_dir().mkdir(parents=True, exist_ok=True)  # without it the toolkit cannot report
    world = [distributed.SINGLE]  # set by _run_job once it knows
    code = _run_job(stop, world)
    if world[0].distributed:
        # A process group torch did not tear down (a peer gone, a stop) can abort the
        # interpreter's exit in C++ ("terminate called"), turning exit 143 or 1 into -6.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_job(stop, where: list) -> int:
    """The job, its outcome as an exit code: 0 with the success file, or a reason in the failure file."""
    from sagemaker_training import files

    from . import distributed, stopping
    world = distributed.SINGLE
    try:
        raw, resources = _check_config()
        hp = hyperparameters.parse(raw)  # the raw strings: the toolkit's JSON-decoding would turn "2.5" epochs into 2
        world = where[0] = distributed.plan(resources)
        if len(resources["hosts"]) > 1 and not environment.under_torchrun():  # torchrun's workers: their launcher did
            distributed.wait_for_address(world.leader_address, hp.host_wait_seconds)
        if _needs_launcher(world) and not environment.under_torchrun():
            return launch_workers(world, resources, distributed.processes_per_host(), stop)
        _train(hp, resources, world, stop)
    except stopping.Stopped as e:
        log.warning("%s; rerun with the same checkpoint directory to resume", e)
        return stopped()
    except TrainingError as e:
        if stop.requested:
            return stopped_by_error(world, e)
        write_failure(str(e))
        return EXIT_FAILED
    except MemoryError:
        write_failure("out of memory: lower batch-size or num-workers, or use a larger instance")
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - the reason must reach the failure file
        traceback.print_exc()
        if stop.requested:
            return stopped_by_error(world, e)
        if world.distributed and distributed.lost_peer(e):
            write_failure(f"{world.describe()} lost the other processes of the job: one failed, was stopped or "
                          f"died; its log and failure file say why ({distributed.first_line(e)})")
            return EXIT_FAILED
        write_failure(f"internal error: {described(e)} (traceback in the job log)")
        return EXIT_INTERNAL
    files.write_success_file()
    return 0


def _needs_launcher(world) -> bool:
    """Several processes on this host, or GPUs in a multi-host job: torchrun starts them. GPUs
    always under torchrun, even one a host: an NCCL error aborts its process, and the launcher
    then writes the reason that process could not."""
    import torch

    from . import distributed
    return distributed.processes_per_host() > 1 or (world.distributed and torch.cuda.is_available())


def _train(hp, resources: dict, world, stop) -> None:
    """This process's part of the job: the toolkit's view of the channels, the folders, the run;
    a trial's checkpoints removed once it completes or fails."""
    from sagemaker_training import environment as toolkit

    from . import checkpoint, distributed, train
    try:
        env = toolkit.Environment()
        environment.export(env.to_env_vars())  # SM_CHANNEL_*, SM_MODEL_DIR, SM_HPS, ... as in script mode
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a config shape not checked above
        traceback.print_exc()
        raise TrainingError(f"sagemaker-training cannot read {paths.input_config_dir()}: "
                            f"{type(e).__name__}: {e}") from None
    channels = {name: Path(d) for name, d in env.channel_input_dirs.items()}
    print("hyperparameters: " + json.dumps(hyperparameters.as_dict(hp), sort_keys=True), flush=True)
    checkpoints, trial = environment.checkpoints(hp.checkpoint_per_job)
    if trial and hp.trial_lifetime_hours and world.leader:
        checkpoint.prune_trials(checkpoints.parent, trial, hp.trial_lifetime_hours * 3600)
    distributed.start(world, hp.distributed_timeout, resources.get("network_interface_name"))
    try:
        where = environment.locations(env.model_dir, env.output_data_dir, hp.checkpoint_per_job, hp.debug_dir,
                                      hp.feature_cache_dir)
        train.run(hp, channels, where, stop, world)
    except TrainingError:
        if trial and not stop.requested:  # a failed trial is not resumed
            checkpoint.remove_trial(checkpoints)
        raise
    distributed.stop()
    if trial:  # a completed trial's model is in its model.tar.gz
        checkpoint.remove_trial(checkpoints)


def stopped() -> int:
    """Exit code 143; a worker under torchrun also says so to its launcher, for which any exit
    but 0 is a failure."""
    marker = environment.stopped_marker()
    if marker:
        marker.touch()
    return EXIT_STOPPED


def stopped_by_error(world, error: BaseException) -> int:
    """An error while a stop is under way (a peer or a loader worker gone first) is the stop."""
    log.warning("%s: stopped by SIGTERM (%s while stopping)", world.describe(), described(error))
    return stopped()


def launch_workers(world, resources: dict, per_host: int, stop) -> int:
    """The processes of this host (one per GPU): torchrun starts them, each running this program
    as one rank, and ends them all when one fails or SIGTERM arrives (SIGKILL 30 s later)."""
    import tempfile
    hosts = resources["hosts"]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(hosts)}",
               f"--node-rank={hosts.index(resources['current_host'])}", f"--nproc-per-node={per_host}",
               f"--master-addr={world.leader_address}", f"--master-port={world.port}",
               str(Path(__file__).resolve().parents[2] / "train")]
    log.info("starting %d training processes on host %s (%d hosts): %s", per_host, resources["current_host"],
             len(hosts), " ".join(command))
    marker = Path(tempfile.mkdtemp(prefix="train-")) / "stopped"
    runner = subprocess.Popen(command, env={**os.environ, environment.STOPPED_MARKER: str(marker)})
    signal.signal(signal.SIGTERM, lambda signum, frame: (stop._handler(signum, frame), runner.terminate()))
    code = runner.wait()
    if stop.requested or marker.exists():  # this host's SIGTERM, or every rank agreed to stop for another's
        return EXIT_STOPPED
    if code != 0:
        write_failure(f"a training process on host {resources['current_host']} ended without a reason of its own "
                      f"(torchrun exited {code}: killed, out of memory, or a lost NCCL peer); the job log says more")
        return EXIT_FAILED
    from sagemaker_training import files
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
            "Writes the model to model/ (model.pt + model.json), checkpoints to checkpoints/,\n"
            "output/data/metrics.json, and on failure a one-line reason to output/failure.\n"
            "Exit codes: 0 done, 1 failed (reason in output/failure), 2 internal error, 143 stopped\n"
            "by SIGTERM after saving a checkpoint (a rerun resumes).\n"
            "Several GPUs or hosts (resourceconfig.json): data-parallel, one process per GPU (torchrun)\n"
            "or per CPU host; the first host leads; batch-size is the global batch.\n\n"
            "Environment:\n" + environment.help_text() + "\n\n"
            "Hyperparameters (all passed as strings):\n" + hyperparameters.help_text()))
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return run_job()


if __name__ == "__main__":
    sys.exit(main())
