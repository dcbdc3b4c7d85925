"""The image's `serve` program: multi-model-server with our handler, under SageMaker's hosting
contract (port $SAGEMAKER_BIND_TO_PORT, /ping, /invocations, $SAGEMAKER_MULTI_MODEL).

sagemaker-inference's start_model_server() writes its config to /etc, binds 0.0.0.0 and leaves
MMS's Python workers running after SIGTERM. We write the same config from its files and settings
but keep the config, pid file, sockets and logs in a private run directory, bind where we are
told, and on SIGTERM stop the whole process tree we started.
"""
from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .. import paths
from . import model_state
from .limits import MIB, max_payload_bytes

log = logging.getLogger("image_classifier.serve")

HANDLER = "image_classifier.serving.handler_service"
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding image_classifier
TOOLKIT_FILES = importlib.resources.files("sagemaker_inference") / "etc"  # its MMS and log4j configuration


def bind_host() -> str:
    """0.0.0.0 in a container (SageMaker's contract); 127.0.0.1 when run natively."""
    default = "127.0.0.1" if "SAGEMAKER_BASE_DIR" in os.environ else "0.0.0.0"
    return os.environ.get("SERVE_HOST", default)


def multi_model() -> bool:
    return os.environ.get("SAGEMAKER_MULTI_MODEL", "false").lower() == "true"


def preload_safe() -> bool:
    """MMS's preload_model: its worker process loads the model once and forks every worker from it,
    instead of each worker importing torch and loading the model itself, all at the same time.
    Measured with 2 workers on 2 cores (bench/serve_latency.py): the first answer 0.6 to 4 s sooner
    (the more other work competes for the cores, the more), and a third less memory (resnet50: 589
    instead of 922 MiB PSS), as the workers share the weights. Only where a fork of a loaded model
    works: without a GPU (CUDA does not survive fork) and with single-threaded torch (neither does
    OpenMP's thread pool: a fork of a process that ran torch on 2 threads hangs at its first
    forward). MMS's worker sets OMP_NUM_THREADS=1 itself when it is unset."""
    return os.environ.get("OMP_NUM_THREADS", "1") == "1" and shutil.which("nvidia-smi") is None


def mms_config(run_dir: Path) -> Path:
    """The MMS configuration sagemaker-inference's start_model_server() writes (the toolkit's files
    and settings; a test compares the two), bound where we are told, plus preload_model. Built here
    because importing the toolkit's model_server module (boto3, scipy) costs 0.4 s of every start."""
    from sagemaker_inference import environment  # reads its environment: import once ours is set

    env = environment.Environment()
    host = bind_host()
    settings = {
        "default_response_timeout": env.model_server_timeout,
        "default_workers_per_model": env.model_server_workers,
        "inference_address": f"http://{host}:{env.inference_http_port}",
        "management_address": f"http://{host}:{env.management_http_port}",
        "vmargs": env.vmargs,
        "max_request_size": env.max_request_size,
        "default_service_handler": None if multi_model() else HANDLER,
        "default_response_timeout_seconds": env.model_server_timeout_seconds,
        "preload_model": "true" if preload_safe() else None,
    }
    defaults = TOOLKIT_FILES / ("mme-mms.properties" if multi_model() else "default-mms.properties")
    text = defaults.read_text().replace("$$SAGEMAKER_HANDLER$$", HANDLER)
    text += "".join(f"{key}={value}\n" for key, value in settings.items() if value)
    path = run_dir / "mms.properties"
    path.write_text(text)
    return path


def stop_tree(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the launcher, Java and its Python workers (all started by us), then SIGKILL stragglers."""
    try:
        tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in reversed(tree):  # workers first, so Java does not restart them
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the model in $SAGEMAKER_BASE_DIR/model (default /opt/ml/model) with multi-model-server.",
        epilog=(
            "Endpoints: GET /ping (200 once MMS is up; requests wait in its queue until the model is\n"
            "loaded, when `serve` logs 'model loaded; ready to answer'), POST /invocations with image/jpeg,\n"
            "image/png, application/x-image or application/json {\"instances\": [base64, ...]}; the answer\n"
            "is JSON with the top-k labels (CustomAttributes 'top_k=N,probabilities=true'). A model that\n"
            "cannot load stops `serve` with exit 1 and the reason.\n\n"
            "Environment: SAGEMAKER_BIND_TO_PORT (default 8080); SERVE_HOST (default 0.0.0.0, or 127.0.0.1\n"
            "when SAGEMAKER_BASE_DIR is set); SAGEMAKER_MULTI_MODEL=true serves a multi-model endpoint:\n"
            "models loaded through POST /models {model_name, url: an absolute path}; SAGEMAKER_MODEL_SERVER_WORKERS,\n"
            "SAGEMAKER_MODEL_SERVER_TIMEOUT as in sagemaker-inference; MAX_PAYLOAD_BYTES (default\n"
            "SAGEMAKER_MAX_PAYLOAD_IN_MB, else 6 MiB), MAX_IMAGE_PIXELS (default 40000000) and\n"
            "MAX_BATCH_IMAGES (default 64) limit requests; over a limit the answer is a JSON 413."))
    parser.parse_args(argv)
    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    port = os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")
    if not port.isdigit() or not 0 < int(port) < 32767:
        print(f"serve: SAGEMAKER_BIND_TO_PORT={port!r}: multi-model-server takes ports 1 to 32766 "
              "(below 32767)", file=sys.stderr)
        return 1
    if shutil.which("multi-model-server") is None:
        print("serve: multi-model-server is not on PATH", file=sys.stderr)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="mms-"))  # short path: it holds Unix sockets
    # The toolkit reads these at import and MMS's processes inherit them.
    os.environ.update(TEMP=str(run_dir), TMPDIR=str(run_dir), LOG_LOCATION=str(run_dir / "logs"),
                      METRICS_LOCATION=str(run_dir / "logs"),
                      PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")])))
    # Bodies over our limit get our JSON 413 from the handler; only far larger ones meet
    # MMS's own 413, which has an empty body.
    limit = max_payload_bytes()
    os.environ.update(MAX_PAYLOAD_BYTES=str(limit), SAGEMAKER_MAX_PAYLOAD_IN_MB=str(-(-4 * limit // MIB)))

    os.environ[model_state.STATE_DIR_ENV] = str(run_dir)
    model_dir = paths.base_dir() / "model"
    cmd = ["multi-model-server", "--start", "--foreground", "--mms-config", str(mms_config(run_dir)),
           # "/": MMS resolves a model's URL under the store, and SageMaker sends absolute paths.
           "--model-store", "/",
           "--log-config", str(TOOLKIT_FILES / "log4j2.xml")]
    if not multi_model():
        cmd += ["--models", f"model={model_dir}"]
    log.info("starting MMS on %s:%s (%s)", bind_host(), port,
             "multi-model" if multi_model() else f"model {model_dir}")
    process = subprocess.Popen(cmd, cwd=run_dir)

    stopping = []

    def shutdown(signum, frame):
        log.info("signal %d: stopping the model server", signum)
        stopping.append(signum)
        stop_tree(process)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    problem = watch(process, run_dir, started, stopping)
    stop_tree(process)  # MMS exiting on its own can still leave workers
    shutil.rmtree(run_dir, ignore_errors=True)
    if problem:
        print(f"serve: cannot serve {model_dir}: {problem}", file=sys.stderr)
        return 1
    if stopping:
        log.info("model server stopped")
        return 0
    log.error("model server exited by itself (exit %s); see the log above", process.returncode)
    return process.returncode or 1


def watch(process: subprocess.Popen, run_dir: Path, started: float, stopping: list) -> str | None:
    """Wait for MMS to exit or be stopped; log when the single model is in, and return the reason
    if it failed to load (MMS itself would keep serving 500s behind a /ping of 200)."""
    loaded = multi_model()
    while process.poll() is None and not stopping:
        now_loaded, problem = model_state.read(run_dir)
        if problem:
            return problem
        if now_loaded and not loaded:
            loaded = True
            log.info("%s (%.1f s after `serve` started)", model_state.READY_LINE, time.monotonic() - started)
        time.sleep(0.05)
    process.wait()
    return None
