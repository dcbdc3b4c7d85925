"""Run the image's own `train` and `serve` programs on this machine, without a container (the
launch side's --local backend, the tests and the benchmarks use it; nothing in the image does):
a SageMaker-style /opt/ml tree (what SageMaker writes before it starts a training container),
the programs' environment, and a `serve` process to start, wait for and stop.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from image_classifier.hyperparameters import to_sagemaker


def make_tree(base: Path, channels: dict[str, Path], hyperparameters: dict | None = None) -> Path:
    """Config files plus one folder per channel (a symlink to the data)."""
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
        if not (target.is_symlink() or target.exists()):
            os.symlink(Path(source).resolve(), target)
    for sub in ("model", "output", "checkpoints"):
        (base / sub).mkdir(exist_ok=True)
    return base


def make_hosts(base: Path, count: int, channels: dict[str, Path], hyperparameters: dict | None = None) -> list[Path]:
    """One /opt/ml tree per host of a COUNT-host job, BASE/algo-1 ... (the leader first): what
    SageMaker gives each instance, with resourceconfig.json naming all hosts and this one."""
    hosts = [f"algo-{i}" for i in range(1, count + 1)]
    trees = []
    for host in hosts:
        tree = make_tree(Path(base) / host, channels, hyperparameters)
        (tree / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
            {"current_host": host, "hosts": hosts, "network_interface_name": "lo"}, indent=2))
        trees.append(tree)
    return trees


def hosts_env(count: int) -> dict[str, str]:
    """What the hosts of a local multi-host job share: the leader on 127.0.0.1 (torch's MASTER_ADDR
    and MASTER_PORT override resourceconfig's host names), and a share of the cores each."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // count))}


# --- running the image's programs natively ------------------------------------------------------
CONTAINER_DIR = Path(__file__).resolve().parents[2] / "container"  # holds the `train` and `serve` programs


def program_env(base: Path, **extra) -> dict:
    """The environment `train`/`serve` get natively: SAGEMAKER_BASE_DIR plus this interpreter's bin."""
    env = dict(os.environ)
    env.update(SAGEMAKER_BASE_DIR=str(base), PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    env.pop("SM_MODEL_DIR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def program(name: str) -> list[str]:
    return [sys.executable, str(CONTAINER_DIR / name)]


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768 up), so that no client
    connection takes it before the server binds it."""
    for port in random.sample(range(20000, 32700), 200):
        with contextlib.closing(socket.socket()) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below 32767")


class Serve:
    """The image's `serve` program on 127.0.0.1, its output in a log file, stopped by pid."""

    def __init__(self, base: Path, port: int | None = None, log_path: Path | None = None, command=None, **env):
        """command(port) -> argv replaces the native program (e.g. `docker run ... IMAGE serve`)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path or Path(base) / f"serve-{self.port}.log", "w+")
        self.process = subprocess.Popen(command(self.port) if command else program("serve"),
                                        env=program_env(base, SAGEMAKER_BIND_TO_PORT=self.port, **env),
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 120) -> float:
        """Seconds until /ping answers 200: `serve`'s front says so once a worker has the model
        loaded (a multi-model endpoint: once its workers can take POST /models)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # 503 while loading is an HTTPError
                pass
            time.sleep(0.1)
        raise TimeoutError(f"no healthy /ping in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.log.close()
        return code
