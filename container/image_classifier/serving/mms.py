"""multi-model-server (MMS) as `serve` runs it: private, bounded, and stopped as a whole.

sagemaker-inference's start_model_server() writes its config to /etc, binds MMS's inference *and*
management APIs to 0.0.0.0:8080 (so anyone who reaches the endpoint can load a model from a URL,
which imports its Python handler), gives Java no heap limit, and leaves MMS's Python workers
running after SIGTERM. We write the same configuration from its files and settings, except that
both APIs listen on Unix sockets in a private (0700) run directory, which only `serve`'s front
(front.py) reaches, and the JVM gets a heap sized from the container's memory.
"""
from __future__ import annotations

import importlib.resources
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil

from . import environment

HANDLER = "image_classifier.serving.handler_service"
TOOLKIT_FILES = importlib.resources.files("sagemaker_inference") / "etc"  # its MMS and log4j configuration
WORKER = "model_service_worker"  # in the command line of every MMS Python process


def workers() -> int:
    """Workers per model: SAGEMAKER_MODEL_SERVER_WORKERS, else MMS's own default (one per GPU, else
    one per CPU this process may run on). config() writes it for MMS, so that /ping (front.py)
    counts the workers MMS starts rather than guessing how the JVM counts processors."""
    configured = environment.workers()
    if configured:
        return configured
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True)
        gpus = listed.stdout.count("GPU ") if listed.returncode == 0 else 0
        if gpus:
            return gpus
    return len(os.sched_getaffinity(0)) or 1


def inference_socket(run_dir: Path) -> Path:
    return Path(run_dir) / "inference.sock"


def management_socket(run_dir: Path) -> Path:
    return Path(run_dir) / "management.sock"


def preload_safe() -> bool:
    """MMS's preload_model: its worker process loads the model once and forks every worker from it,
    instead of each worker importing torch and loading the model itself, all at the same time.
    With 2 workers on 2 cores (bench/serve_latency.py, docs/PERFORMANCE.md) the first answer
    comes seconds sooner and the workers take about a third less memory, as they share the
    weights. Only where a fork of a loaded model works: without a GPU (CUDA does not survive
    fork) and with single-threaded torch (neither does OpenMP's thread pool: a fork of a process
    that ran torch on 2 threads hangs at its first forward). MMS's worker sets OMP_NUM_THREADS=1
    itself when it is unset."""
    return environment.single_threaded() and shutil.which("nvidia-smi") is None


def memory_limit() -> int:
    """Bytes this container may use: its cgroup's limit (v2, then v1) or the machine's memory."""
    limits = [psutil.virtual_memory().total]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) or a huge number (v1) means no limit
            limits.append(int(text))
    return min(limits)


def jvm_heap_mib(memory: int) -> int:
    """MMS's Java frontend only moves bytes; the models live in the Python workers. 1/32 of the
    container's memory, 256 to 512 MiB (room for request bodies of up to 6 MB waiting in MMS's
    queue): 256 MiB on an 8 GiB ml.m5.large. Unbounded, the JVM takes a quarter of the machine's
    memory as its ceiling."""
    return max(256, min(512, memory // 32 // environment.MIB))


def vmargs(toolkit_default: str) -> str:
    """The toolkit's JVM arguments (SAGEMAKER_MODEL_SERVER_VMARGS) plus a heap bound unless the
    user set one, and an exit on OutOfMemoryError (so `serve` reports it instead of a JVM limping on)."""
    args = toolkit_default.split()
    if not any(a.startswith("-Xmx") or a.startswith("-XX:MaxRAM") for a in args):
        args.append(f"-Xmx{jvm_heap_mib(memory_limit())}m")
    if "-XX:+ExitOnOutOfMemoryError" not in args:
        args.append("-XX:+ExitOnOutOfMemoryError")
    return " ".join(args)


def config(run_dir: Path, max_request_size: int, load_models: bool = True) -> Path:
    """The MMS configuration sagemaker-inference's start_model_server() writes (the toolkit's files
    and settings; a test compares the two), with the changes above, plus preload_model. Built here
    because importing the toolkit's model_server module (boto3, scipy) costs 0.4 s of every start."""
    from sagemaker_inference import environment as toolkit  # reads its environment: import once ours is set

    env = toolkit.Environment()
    settings = {
        "default_response_timeout": env.model_server_timeout,
        "default_workers_per_model": workers(),  # always written: the front counts the same workers
        "inference_address": f"unix:{inference_socket(run_dir)}",
        "management_address": f"unix:{management_socket(run_dir)}",
        "vmargs": vmargs(env.vmargs),
        "max_request_size": max_request_size,
        "default_service_handler": None if environment.multi_model() else HANDLER,
        "default_response_timeout_seconds": env.model_server_timeout_seconds,
        "preload_model": "true" if preload_safe() else None,
    }
    defaults = TOOLKIT_FILES / ("mme-mms.properties" if environment.multi_model() else "default-mms.properties")
    text = defaults.read_text().replace("$$SAGEMAKER_HANDLER$$", HANDLER)
    if not load_models:  # ALL would load every folder of the model store ("/") as a model
        text = text.replace("load_models=ALL", "load_models=")
    text += "".join(f"{key}={value}\n" for key, value in settings.items() if value)
    path = Path(run_dir) / "mms.properties"
    path.write_text(text)
    return path


def start(run_dir: Path, max_request_size: int, model: Path | None) -> subprocess.Popen:
    """MMS in the foreground, serving `model` (a staged folder) or nothing yet (multi-model mode, or
    a model the front registers with batching)."""
    cmd = ["multi-model-server", "--start", "--foreground",
           "--mms-config", str(config(run_dir, max_request_size, load_models=model is not None)),
           # "/": MMS resolves a model's URL under the store; we give it absolute paths.
           "--model-store", "/", "--log-config", str(TOOLKIT_FILES / "log4j2.xml")]
    if model is not None:
        cmd += ["--models", f"model={model}"]
    # Its own process group: stop_tree reaches every process MMS starts, even a worker whose
    # parent has died (MMS's listener forks its workers with multiprocessing).
    return subprocess.Popen(cmd, cwd=run_dir, start_new_session=True)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def python_processes(pid: int) -> tuple[psutil.Process | None, list[psutil.Process]]:
    """MMS's live Python processes under `serve` (pid): the listener that loads the model and forks
    the workers (its parent is Java; with preload_model), and the workers. For the soak benchmark
    and the tests that kill them."""
    listener, workers = None, []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE or not any(WORKER in part for part in p.cmdline()):
                continue
            if p.parent().name() == "java":
                listener = p
            else:
                workers.append(p)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue  # one that just died
    return listener, workers


def stop_tree(process: subprocess.Popen, timeout: float = 2.0) -> None:
    """SIGTERM the launcher, Java and its Python workers (all started by us, in MMS's own process
    group), then SIGKILL what is left after `timeout`. A worker busy in C code (a decoder) runs its
    Python SIGTERM handler only when that returns, so the SIGKILL is what ends it; the whole stop
    takes at most `timeout` plus a moment, well within SageMaker's 30 s after SIGTERM."""
    tree = [process] if process.poll() is None else []
    tree = [psutil.Process(p.pid) for p in tree] + descendants(process.pid)
    for p in reversed(tree):  # workers first, so Java does not restart them
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _signal_group(process.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    _signal_group(process.pid, signal.SIGKILL)  # also any process of the group that left the tree
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    process.poll()  # reap the launcher


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone
