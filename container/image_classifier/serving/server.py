"""The image's `serve` program, under SageMaker's hosting contract (port $SAGEMAKER_BIND_TO_PORT,
/ping, /invocations, $SAGEMAKER_MULTI_MODEL): multi-model-server with our handler (mms.py) on
private Unix sockets, behind our HTTP front (front.py) on the port. Config, sockets, pid file and
logs stay in a private run directory; on SIGTERM the front drains, then the whole process tree
we started is stopped.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import paths
from . import mms, model_state, model_store
from .limits import MIB, max_payload_bytes

log = logging.getLogger("image_classifier.serve")

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding image_classifier

EPILOG = """\
Endpoints: GET /ping (200 once a loaded worker can answer, else 503 with the reason), POST
/invocations with image/jpeg, image/png, application/x-image (also a body without Content-Type) or
application/json {"instances": [base64, ...]}; the answer is JSON with the top-k labels
(CustomAttributes 'top_k=N,probabilities=true'). Errors are JSON 4xx/5xx without tracebacks.
A model that cannot load stops `serve` with exit 1 and the reason; so does a worker set that stays
dead for SERVE_UNHEALTHY_SECONDS. Only model.pt and model.json of the model folder are read:
nothing in it is run or installed.

Environment: SAGEMAKER_BIND_TO_PORT (default 8080); SERVE_HOST (default 0.0.0.0, or 127.0.0.1
when SAGEMAKER_BASE_DIR is set); SAGEMAKER_MULTI_MODEL=true serves a multi-model endpoint:
POST /models {model_name, url: a folder under $SAGEMAKER_BASE_DIR/models}, GET /models,
GET|DELETE /models/NAME, POST /models/NAME/invoke; SAGEMAKER_MODEL_SERVER_WORKERS,
SAGEMAKER_MODEL_SERVER_TIMEOUT and SAGEMAKER_MODEL_SERVER_VMARGS as in sagemaker-inference (the
JVM's heap is bounded from the container's memory unless -Xmx is given); MAX_PAYLOAD_BYTES (default
SAGEMAKER_MAX_PAYLOAD_IN_MB, else 6 MiB), MAX_IMAGE_PIXELS (per image, default 40000000),
MAX_REQUEST_PIXELS (all images of a request, default 40000000), MAX_DECODE_SECONDS (default 5)
and MAX_BATCH_IMAGES (default 64) limit requests; over a limit the answer is a JSON 413.
SERVE_DRAIN_SECONDS (default 25): how long SIGTERM waits for requests in flight;
SERVE_UNHEALTHY_SECONDS (default 30): how long no worker may answer before `serve` exits 1.
SERVE_PRECISION (auto, fp32, bf16, bf16-autocast, fp16; default auto): the arithmetic. auto serves
the fastest reduced precision this hardware has (CPUs with bf16 instructions: a frozen graph with
bf16 weights, else with fp32 weights under bf16 autocast; GPUs: bf16 or fp16) whose top-1 agreement
with fp32, measured by training (model.json), is at least 99.5%; else fp32. SERVE_GRAPH (frozen,
compiled; default frozen): how a CPU runs the reduced precisions (compiled: torch.compile, faster
answers, about 10 s more to start). SERVE_PROBABILITIES=true: the full probability vector in every
answer (Accept application/jsonlines: one line per image, always with it). CustomAttributes
'explain=gradcam[,explain_class=LABEL]': a Grad-CAM heat map (PNG) and box per image.
SERVE_BATCH_SIZE (default 1) and SERVE_MAX_BATCH_DELAY_MS (default 20): MMS's dynamic batching;
up to that many requests arriving within the delay are answered with one forward."""


def bind_host() -> str:
    """0.0.0.0 in a container (SageMaker's contract); 127.0.0.1 when run natively."""
    default = "127.0.0.1" if "SAGEMAKER_BASE_DIR" in os.environ else "0.0.0.0"
    return os.environ.get("SERVE_HOST", default)


def _seconds(name: str, default: float) -> float:
    value = float(os.environ.get(name, default))
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Serve the model in $SAGEMAKER_BASE_DIR/model (default /opt/ml/model) with multi-model-server.")
    parser.parse_args(argv)
    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    port = os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080")
    if not port.isdigit() or not 0 < int(port) < 65536:
        print(f"serve: SAGEMAKER_BIND_TO_PORT={port!r} is not a TCP port (1 to 65535)", file=sys.stderr)
        return 1
    if shutil.which("multi-model-server") is None:
        print("serve: multi-model-server is not on PATH", file=sys.stderr)
        return 1
    try:
        limit = max_payload_bytes()
        batching = mms.batching()
        timing = dict(request_timeout=_seconds("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60) + 5,
                      drain_seconds=_seconds("SERVE_DRAIN_SECONDS", 25),
                      unhealthy_seconds=_seconds("SERVE_UNHEALTHY_SECONDS", 30))
    except ValueError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 1
    run_dir = Path(tempfile.mkdtemp(prefix="mms-"))  # 0700, short path: it holds Unix sockets
    # The toolkit reads these at import and MMS's processes inherit them.
    os.environ.update(TEMP=str(run_dir), TMPDIR=str(run_dir), LOG_LOCATION=str(run_dir / "logs"),
                      METRICS_LOCATION=str(run_dir / "logs"), MAX_PAYLOAD_BYTES=str(limit),
                      PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")])))
    os.environ[model_state.STATE_DIR_ENV] = str(run_dir)
    multi = mms.multi_model()
    model_dir = paths.base_dir() / "model"
    staged = None if multi else model_store.stage(model_dir, run_dir / "model")
    log.info("serving on %s:%s (%s)", bind_host(), port, "multi-model, models under "
             f"{model_store.model_root()}" if multi else f"model {model_dir}")
    # The front refuses bodies over the limit; MMS's own ceiling only has to let those through.
    batching = batching if batching["batch_size"] > 1 else None
    register = staged if batching and not multi else None  # MMS batches only models registered through its API
    process = mms.start(run_dir, limit + MIB, None if register else staged)
    from .front import Front  # aiohttp's import (0.3 s) overlaps Java's start

    front = Front(run_dir, process, multi_model=multi, payload_limit=limit, started=started, batching=batching,
                  register=register, **timing)
    try:
        problem = asyncio.run(front.serve(bind_host(), int(port)))
    finally:
        mms.stop_tree(process)  # MMS exiting on its own can still leave workers
        shutil.rmtree(run_dir, ignore_errors=True)
    if problem:
        if staged is not None:
            problem = problem.replace(str(staged), str(model_dir))  # name the user's folder, not ours
        print(f"serve: cannot serve {'models' if multi else model_dir}: {problem}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0
