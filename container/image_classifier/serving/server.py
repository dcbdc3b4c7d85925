"""The image's `serve` program: multi-model-server with our handler, under SageMaker's hosting
contract (port $SAGEMAKER_BIND_TO_PORT, /ping, /invocations, $SAGEMAKER_MULTI_MODEL).

sagemaker-inference's start_model_server() writes its config to /etc, binds 0.0.0.0 and leaves
MMS's Python workers running after SIGTERM. We reuse its config generator but keep the config,
pid file, sockets and logs in a private run directory, bind where we are told, and on SIGTERM
stop the whole process tree we started.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import psutil

from .. import paths
from .limits import MIB, max_payload_bytes

log = logging.getLogger("image_classifier.serve")

HANDLER = "image_classifier.serving.handler_service"
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding image_classifier


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
    # The toolkit reads its environment at import; import it only once ours is set.
    with warnings.catch_warnings():  # it imports pkg_resources, deprecated but present (setuptools<82)
        warnings.simplefilter("ignore")
        from sagemaker_inference import environment, model_server

    handler = None if multi_model() else HANDLER
    text = model_server._generate_mms_config_properties(environment.Environment(), handler)
    text = text.replace("http://0.0.0.0:", f"http://{bind_host()}:")
    if multi_model():
        text = text.replace("$$SAGEMAKER_HANDLER$$", HANDLER)
    if preload_safe():
        text += "preload_model=true\n"
    path = run_dir / "mms.properties"
    path.write_text(text)
    return path


def check_model(model_dir: Path) -> str | None:
    """Load the model and run it once, in a child process that then frees its memory.

    MMS answers /ping with 200 even while every worker fails to load the model, so a broken
    artifact is refused here, before the server starts.
    """
    result = subprocess.run([sys.executable, "-m", "image_classifier.artifact", str(model_dir)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["model check failed"])[-1]
    return None


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
            "Endpoints: GET /ping (200 once the model is loaded), POST /invocations with image/jpeg,\n"
            "image/png, application/x-image or application/json {\"instances\": [base64, ...]}; the answer\n"
            "is JSON with the top-k labels (CustomAttributes 'top_k=N,probabilities=true').\n\n"
            "Environment: SAGEMAKER_BIND_TO_PORT (default 8080); SERVE_HOST (default 0.0.0.0, or 127.0.0.1\n"
            "when SAGEMAKER_BASE_DIR is set); SAGEMAKER_MULTI_MODEL=true serves a multi-model endpoint:\n"
            "models loaded through POST /models {model_name, url: an absolute path}; SAGEMAKER_MODEL_SERVER_WORKERS,\n"
            "SAGEMAKER_MODEL_SERVER_TIMEOUT as in sagemaker-inference; MAX_PAYLOAD_BYTES (default\n"
            "SAGEMAKER_MAX_PAYLOAD_IN_MB, else 6 MiB), MAX_IMAGE_PIXELS (default 40000000) and\n"
            "MAX_BATCH_IMAGES (default 64) limit requests; over a limit the answer is a JSON 413."))
    parser.parse_args(argv)
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

    model_dir = paths.base_dir() / "model"
    if not multi_model():
        problem = check_model(model_dir)
        if problem:
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"serve: cannot serve {model_dir}: {problem}", file=sys.stderr)
            return 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sagemaker_inference import model_server  # after the environment is final

    cmd = ["multi-model-server", "--start", "--foreground", "--mms-config", str(mms_config(run_dir)),
           # "/": MMS resolves a model's URL under the store, and SageMaker sends absolute paths.
           "--model-store", "/",
           "--log-config", model_server.DEFAULT_MMS_LOG_FILE]
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
    code = process.wait()
    stop_tree(process)  # MMS exiting on its own can still leave workers
    shutil.rmtree(run_dir, ignore_errors=True)
    if stopping:
        log.info("model server stopped")
        return 0
    log.error("model server exited by itself (exit %s); see the log above", code)
    return code or 1
