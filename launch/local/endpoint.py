"""A local endpoint: the image's `serve` (natively, or in the image with the docker runner) with
the SageMaker Runtime gateway in front. Runs in the foreground until SIGTERM or Ctrl-C, and
records itself in local-endpoints/NAME.json so cleanup.py --local can stop it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path

from launch.local import programs
from . import docker_run
from .gateway import Backend, Gateway

STATE_DIR = Path("local-endpoints")


def _docker_command(image: str, name: str, mounts: dict[Path, str], env: dict):
    """`docker run IMAGE serve` bound to 127.0.0.1, the model(s) mounted read-only."""
    volumes = {host: f"{inside}:ro" for host, inside in mounts.items()}
    return lambda port: [*docker_run(name, {"SERVE_HOST": "127.0.0.1", "SAGEMAKER_BIND_TO_PORT": port, **env},
                                     volumes), image, "serve"]


def _model_folder(source: Path, unpack_to: Path) -> Path:
    """A model folder from a folder or a model.tar.gz (unpacked, as SageMaker does)."""
    source = Path(source).resolve()
    if source.is_file() and source.name.endswith(".tar.gz"):
        unpack_to.mkdir(parents=True)
        with tarfile.open(source) as tar:
            tar.extractall(unpack_to, filter="data")  # no paths outside, no devices or links out
        source = unpack_to
    if not (source / "model.json").exists():
        raise SystemExit(f"no model in {source} (model.json missing)")
    return source


def run(name: str, model_dir: Path | None, port: int, runner: str = "native", image: str | None = None,
        state_dir: Path = STATE_DIR, models: dict[str, Path] | None = None) -> int:
    """Serve model_dir, or with models={'dogs': folder or model.tar.gz, ...} a multi-model endpoint."""
    base = Path(state_dir).resolve() / name
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    if models:
        folders = {m: _model_folder(src, base / "unpacked" / m) for m, src in models.items()}
        if runner != "docker":  # serve loads only folders under its model root, as SageMaker's /opt/ml/models
            (base / "models").mkdir()
            for m, f in folders.items():  # copies: serve refuses a link to a folder outside its model root
                shutil.copytree(f, base / "models" / m)
        inside = {m: f"/opt/ml/models/{m}" if runner == "docker" else str(base / "models" / m) for m in folders}
        env = {"SAGEMAKER_MULTI_MODEL": "true"}
        mounts = {f: inside[m] for m, f in folders.items()}
        what = f"multi-model endpoint of {', '.join(folders)}"
    else:
        model_dir = _model_folder(model_dir, base / "unpacked" / "model")
        (base / "model").symlink_to(model_dir)
        inside, env, mounts, what = None, {}, {model_dir: "/opt/ml/model"}, str(model_dir)
    print(f"starting endpoint {name}: `serve` ({runner}) for {what}", flush=True)
    if runner == "docker":
        if not image:
            raise SystemExit("--local-runner docker needs the image: set image_uri (or --image-uri)")
        command = _docker_command(image, f"{name}-serve", mounts, env)
        serve = programs.Serve(base, log_path=base / "serve.log", command=command)
    else:
        serve = programs.Serve(base, log_path=base / "serve.log", **env)
    try:
        seconds = serve.wait_healthy()
    except Exception:
        serve.stop()
        raise
    gateway = Gateway({name: Backend(serve.url, inside)}, port=port)
    gateway.start()
    state = Path(state_dir).resolve() / f"{name}.json"
    state.write_text(json.dumps({"name": name, "pid": os.getpid(), "url": gateway.url, "serve": serve.url,
                                 "model_dir": str(model_dir) if not models else None,
                                 "models": {m: str(p) for m, p in (models or {}).items()}}, indent=2))
    print(f"endpoint {name} InService after {seconds:.1f} s at {gateway.url}", flush=True)
    target = f" --target-model {next(iter(models))}.tar.gz" if models else ""
    print(f"  aws sagemaker-runtime invoke-endpoint --endpoint-name {name} --body fileb://IMAGE.jpg "
          f"--content-type image/jpeg --accept application/json{target} --endpoint-url {gateway.url} out.json",
          flush=True)
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
