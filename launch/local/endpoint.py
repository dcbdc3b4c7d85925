"""A local endpoint: the image's `serve` (natively, or in the image with the docker runner) with
the SageMaker Runtime gateway in front. Runs in the foreground until SIGTERM or Ctrl-C, and
records itself in local-endpoints/NAME.json so cleanup.py --local can stop it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from image_classifier import local
from .gateway import Gateway

STATE_DIR = Path("local-endpoints")


def _docker_command(base: Path, image: str, name: str):
    """`docker run IMAGE serve` on the host network, bound to 127.0.0.1, the model mounted."""
    model = (base / "model").resolve()
    return lambda port: [os.environ.get("DOCKER", "docker"), "run", "--rm", "--network=host", "--name", name,
                         "-e", "SERVE_HOST=127.0.0.1", "-e", f"SAGEMAKER_BIND_TO_PORT={port}",
                         "-v", f"{model}:/opt/ml/model:ro", image, "serve"]


def run(name: str, model_dir: Path, port: int, runner: str = "native", image: str | None = None,
        state_dir: Path = STATE_DIR) -> int:
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "model.json").exists():
        raise SystemExit(f"no model in {model_dir} (model.json missing)")
    base = Path(state_dir).resolve() / name
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    (base / "model").symlink_to(model_dir)
    print(f"starting endpoint {name}: `serve` ({runner}) for {model_dir}", flush=True)
    if runner == "docker":
        if not image:
            raise SystemExit("--local-runner docker needs the image: set image_uri (or --image-uri)")
        serve = local.Serve(base, log_path=base / "serve.log", command=_docker_command(base, image, f"{name}-serve"))
    else:
        serve = local.Serve(base, log_path=base / "serve.log")
    try:
        seconds = serve.wait_healthy()
    except Exception:
        serve.stop()
        raise
    gateway = Gateway({name: serve.url}, port=port)
    gateway.start()
    state = Path(state_dir).resolve() / f"{name}.json"
    state.write_text(json.dumps({"name": name, "pid": os.getpid(), "url": gateway.url, "serve": serve.url,
                                 "model_dir": str(model_dir)}, indent=2))
    print(f"endpoint {name} InService after {seconds:.1f} s at {gateway.url}", flush=True)
    print(f"  aws sagemaker-runtime invoke-endpoint --endpoint-name {name} --body fileb://IMAGE.jpg "
          f"--content-type image/jpeg --accept application/json --endpoint-url {gateway.url} out.json", flush=True)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.is_set() and serve.process.poll() is None:
        stopping.wait(0.5)
    gateway.shutdown()
    gateway.server_close()
    code = serve.stop()
    state.unlink(missing_ok=True)
    print(f"endpoint {name} deleted", flush=True)
    return 0 if code in (0, None) else code


def running(state_dir: Path = STATE_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(state_dir).glob("*.json"))]


def stop(entry: dict, timeout: float = 30) -> None:
    """SIGTERM the `deploy --local` process that started this endpoint (it stops its serve)."""
    try:
        os.kill(entry["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(entry["pid"], 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
