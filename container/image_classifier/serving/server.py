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
from . import environment, mms, model_store
from .environment import MIB

log = logging.getLogger("image_classifier.serve")

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding image_classifier

EPILOG = """\
Endpoints: GET /ping (200 once a loaded worker can answer, else 503 with the reason), POST
/invocations with image/jpeg, image/png, application/x-image (also a body without Content-Type) or
application/json {"instances": [base64, ...]}: JPEG, PNG, WebP, BMP, GIF or TIFF, each checked from
its headers before it is decoded; the answer is JSON with the top-k labels
(CustomAttributes 'top_k=N,probabilities=true'). Errors are JSON 4xx/5xx without tracebacks.
A model that cannot load stops `serve` with exit 1 and the reason; so does a worker set that stays
dead for SERVE_UNHEALTHY_SECONDS. A worker past its deadline (MAX_DECODE_SECONDS to decode a
request, SAGEMAKER_MODEL_SERVER_TIMEOUT for the forward) is killed and replaced; its client gets a
JSON 413 or 504. Only model.pt and model.json of the model folder are read:
nothing in it is run or installed.

CustomAttributes 'explain=gradcam[,explain_class=LABEL]': a Grad-CAM heat map (PNG) and box per image.
Accept application/jsonlines: one line per image, always with the full probability vector.

Environment:
""" + environment.help_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Serve the model in $SAGEMAKER_BASE_DIR/model (default /opt/ml/model) with multi-model-server.")
    parser.parse_args(argv)
    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        environment.check()
    except environment.SettingError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 1
    if shutil.which("multi-model-server") is None:
        print("serve: multi-model-server is not on PATH", file=sys.stderr)
        return 1
    port, host, limit, multi = (environment.port(), environment.bind_host(), environment.max_payload_bytes(),
                                environment.multi_model())
    timing = dict(request_timeout=environment.model_server_timeout() + 5, drain_seconds=environment.drain_seconds(),
                  unhealthy_seconds=environment.unhealthy_seconds())
    run_dir = Path(tempfile.mkdtemp(prefix="mms-"))  # 0700, short path: it holds Unix sockets
    os.environ.update(environment.for_workers(run_dir, limit, PACKAGE_PARENT))  # MMS's processes inherit them
    model_dir = paths.base_dir() / "model"
    staged = None if multi else model_store.stage(model_dir, run_dir / "model")
    log.info("serving on %s:%s (%s)", host, port, "multi-model, models under "
             f"{model_store.model_root()}" if multi else f"model {model_dir}")
    batching = environment.batching()
    batching = batching if batching["batch_size"] > 1 else None
    register = staged if batching and not multi else None  # MMS batches only models registered through its API
    # The front refuses bodies over the limit; MMS's own ceiling only has to let those through.
    process = mms.start(run_dir, limit + MIB, None if register else staged)
    from .front import Front  # aiohttp's import (0.3 s) overlaps Java's start

    front = Front(run_dir, process, multi_model=multi, payload_limit=limit, started=started, batching=batching,
                  register=register, **timing)
    try:
        problem = asyncio.run(front.serve(host, port))
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
