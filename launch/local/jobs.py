"""Local training jobs: a per-job /opt/ml tree and the image's own `train`, run natively
(SAGEMAKER_BASE_DIR) or in the image (--local-runner docker). The log is kept, and its metric
lines are read with the same regexes SageMaker uses.

A job on N hosts gets N trees, NAME/algo-1 ... (the leader's first), and N `train` processes
(or containers on the host network) that find the leader on 127.0.0.1, as SageMaker's
instances find algo-1."""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from pathlib import Path

from image_classifier import metrics
from launch.local import programs
from . import docker_run
from ..jobs import OWN_HOOK_DEBUG_DIR, own_hook_hyperparameters


@dataclasses.dataclass
class LocalJob:
    name: str
    base: Path  # its /opt/ml
    process: subprocess.Popen | None = None
    returncode: int | None = None
    started: float = 0.0
    seconds: float = 0.0
    peers: list["LocalJob"] = dataclasses.field(default_factory=list)  # the other hosts of a multi-host job

    @property
    def log(self) -> Path:
        return self.base / "job.log"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0

    @property
    def status(self) -> str:
        return {None: "InProgress", 0: "Completed", 143: "Stopped"}.get(self.returncode, "Failed")

    def metrics(self) -> dict[str, list[float]]:
        return metrics.parse(self.log.read_text()) if self.log.exists() else {}

    def failure(self) -> str | None:
        """The reason a host wrote: a cause (the leader's first) before a host that only lost the others."""
        found = [path.read_text().strip() for path in (job.base / "output" / "failure" for job in (self, *self.peers))
                 if path.exists()]
        return next((r for r in found if " lost the other processes of the job" not in r), found[0] if found else None)


def present(data, channels: list[str], explicit: bool) -> list[str]:
    """The local twin of jobs.inputs: default channels without a folder are left out (train is
    required); channels named on the command line must all be there."""
    if not data:
        raise SystemExit("--local needs --data: a folder with train/ (valid/, test/) class folders")
    missing = [c for c in channels if not (Path(data) / c).is_dir()]
    needed = [c for c in missing if explicit or c == "train"]
    if needed:
        raise SystemExit(f"{data} has no {', '.join(needed)} folder(s) for the channel(s)")
    for name in missing:
        print(f"channel {name}: no {Path(data) / name} folder; the job runs without it", flush=True)
    return [c for c in channels if c not in missing]


def start(name: str, root: Path, data: Path, channels: list[str], hyperparameters: dict,
          runner: str = "native", image: str | None = None, env: dict | None = None, hosts: int = 1,
          pretrained: Path | None = None, isolated: bool = False) -> LocalJob:
    """Start `train` in a fresh /opt/ml tree ROOT/NAME (ROOT/NAME/algo-N for each of several
    hosts); env adds variables (e.g. OMP_NUM_THREADS). pretrained: the 'pretrained' channel's
    folder. isolated: no network in the container (docker), as SageMaker's network isolation; the
    native runner cannot cut a process's network, so it only keeps the Hub client offline."""
    env = {k: str(v) for k, v in (env or {}).items()}
    if isolated and hosts > 1:
        raise SystemExit("--local --network-isolation runs one host: local hosts reach each other over the host "
                         "network, which isolation removes")
    if isolated:
        env.setdefault("HF_HUB_OFFLINE", "1")
    data = Path(data).resolve()
    missing = [c for c in channels if not (data / c).is_dir()]
    if missing:
        raise SystemExit(f"{data} has no {', '.join(missing)} folder(s) for the channel(s)")
    if hosts < 1:
        raise SystemExit(f"--hosts must be 1 or more, got {hosts}")
    base = Path(root).resolve() / name
    channel_dirs = {c: data / c for c in channels}
    if pretrained is not None:
        channel_dirs["pretrained"] = Path(pretrained).resolve()
    if hosts == 1:
        programs.make_tree(base, channel_dirs, hyperparameters)
        return _start_host(name, base, data, hyperparameters, runner, image, env, channel_dirs.get("pretrained"),
                           isolated)
    trees = programs.make_hosts(base, hosts, channel_dirs, hyperparameters)
    env = {**programs.hosts_env(hosts), **env}
    jobs = [_start_host(f"{name}-{tree.name}", tree, data, hyperparameters, runner, image, env,
                        channel_dirs.get("pretrained")) for tree in trees]
    jobs[0].peers = jobs[1:]
    return jobs[0]


def _start_host(name: str, base: Path, data: Path, hyperparameters: dict, runner: str, image: str | None,
                env: dict, pretrained: Path | None = None, isolated: bool = False) -> LocalJob:
    job = LocalJob(name, base, started=time.monotonic())
    log = open(job.log, "w")
    if runner == "docker":
        if not image:
            raise SystemExit("--local-runner docker needs the image: set image_uri (or --image-uri)")
        # Channels are symlinks into the data folder: mount it at the same path, read-only; a
        # shared feature cache (local tuning) at its own path too, so every trial names it alike.
        volumes = {base: "/opt/ml", data: f"{data}:ro", **({pretrained: f"{pretrained}:ro"} if pretrained else {})}
        if hyperparameters.get("feature-cache-dir"):
            cache = Path(hyperparameters["feature-cache-dir"])
            cache.mkdir(parents=True, exist_ok=True)
            volumes[cache] = str(cache)
        cmd = [*docker_run(name, env, volumes, isolated), image, "train"]
        job.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    else:
        job.process = subprocess.Popen(programs.program("train"), env=programs.program_env(base, **env), stdout=log,
                                       stderr=subprocess.STDOUT)
    log.close()
    return job


def stop(job: LocalJob) -> None:
    """SIGTERM to every host, as SageMaker stops a job: `train` checkpoints and exits 143."""
    for one in (job, *job.peers):
        if one.process and one.process.poll() is None:
            one.process.send_signal(signal.SIGTERM)


def wait(job: LocalJob) -> LocalJob:
    """The job's exit code is the leader's, or the first other host's that did not succeed."""
    codes = [one.process.wait() for one in (job, *job.peers)]
    job.returncode = next((c for c in codes if c != 0), 0)
    job.seconds = time.monotonic() - job.started
    return job


def follow(job: LocalJob, on_line, poll: float = 0.5) -> LocalJob:
    """Call on_line(line) for each new log line until the job ends."""
    with open(job.log) as f:
        while True:
            line = f.readline()
            if line:
                on_line(line.rstrip("\n"))
                continue
            if job.process.poll() is not None:
                for rest in f:
                    on_line(rest.rstrip("\n"))
                return wait(job)
            time.sleep(poll)


def run_training_job(settings, data, channels: list[str], local_dir, runner: str = "native",
                     job_name: str | None = None, hosts: int = 1, pretrained: str | None = None) -> LocalJob:
    if not data:
        raise SystemExit("--local needs --data: a folder with train/ (valid/, test/) class folders")
    name = job_name or f"{settings.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if settings.network_isolation and runner != "docker":
        print("note: --network-isolation with the native runner keeps the Hugging Face Hub client offline "
              "(HF_HUB_OFFLINE=1) but cannot cut the process's network; --local-runner docker runs the job "
              "with none", flush=True)
    job = start(name, Path(local_dir), Path(data), channels, own_hook_hyperparameters(settings), runner,
                settings.image_uri, hosts=hosts, pretrained=Path(pretrained) if pretrained else None,
                isolated=settings.network_isolation)
    where = f"{job.base}" + (f" (the leader; the other hosts' logs in {job.base.parent}/algo-*/job.log)"
                             if job.peers else "")
    print(f"local training job {name} in {where} ({runner}{f', {hosts} hosts' if hosts > 1 else ''})", flush=True)
    follow(job, lambda line: print(line, flush=True))
    if job.succeeded:
        print(f"model: {job.model_dir}")
    else:
        print(f"job {name} {job.status.lower()} (exit {job.returncode}): {job.failure() or 'see ' + str(job.log)}")
    print_rule_results(job)
    return job


def print_rule_results(job: LocalJob) -> None:
    """The local Debugger rules over the job's tensors, as launch.train prints SageMaker's rule statuses."""
    trial = job.base / "output" / OWN_HOOK_DEBUG_DIR
    if not (trial / "index").is_dir():
        return
    from ..debugger_rules import evaluate
    for result in evaluate(trial):
        print(f"rule {result.rule}: {result.status} ({result.detail})")
    print(f"report: python -m launch.report {job.base}")
