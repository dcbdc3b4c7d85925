"""Every environment variable the serving side reads, and nothing else: `serve` (server.py, front.py,
mms.py) and the MMS worker (the handler, inference.py) ask here instead of reading os.environ, as
sagemaker-inference's own `environment` module does for its variables. Each is read when asked for,
so a worker sees what `serve` set for it. A value out of range raises SettingError; `serve` checks
them all before it starts anything (check()).

VARIABLES documents them: `serve --help` lists it and docs/SERVING.md carries its table
(`python -m image_classifier.serving.environment` prints it; a test keeps the two the same).
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import variables
from ..hyperparameters import truthy
from ..variables import Variable  # the handler's options say yes as the variables do

MIB = 1024 * 1024
PRECISION = "SERVE_PRECISION"
PRECISIONS = ("auto", "fp32", "bf16", "bf16-autocast", "fp16")
GRAPHS = ("frozen", "compiled")
STATE_DIR = "SERVE_STATE_DIR"  # set by `serve` for its workers: where they report a model's load (model_state.py)


class SettingError(ValueError):
    """An environment variable's value `serve` cannot use."""


VARIABLES = (
    Variable("SAGEMAKER_BIND_TO_PORT", "`8080`", "the one TCP port the container listens on (1 to 65535)"),
    Variable("SERVE_HOST", "`0.0.0.0`; `127.0.0.1` when `SAGEMAKER_BASE_DIR` is set", "bind address"),
    Variable("SAGEMAKER_MULTI_MODEL", "`false`",
             "`true`: a multi-model endpoint, driven as SageMaker drives one: `POST /models {\"model_name\", \"url\"}` "
             "loads a folder under `$SAGEMAKER_BASE_DIR/models` (`/opt/ml/models`, where SageMaker puts them; a URL "
             "or any other path is a 400), `GET /models` and `GET /models/NAME` list names and the URLs given, "
             "`DELETE /models/NAME` unloads, `POST /models/NAME/invoke` predicts; a model that fails to load "
             "answers its requests with a JSON 500 naming the reason"),
    Variable("MAX_PAYLOAD_BYTES", "`SAGEMAKER_MAX_PAYLOAD_IN_MB` MiB, else 6 MiB",
             "body limit (JSON 413 above it); batch transform sets `SAGEMAKER_MAX_PAYLOAD_IN_MB` from MaxPayloadInMB"),
    Variable("MAX_IMAGE_PIXELS", "`40000000`", "one image's pixels, checked before decoding"),
    Variable("MAX_REQUEST_PIXELS", "`40000000`",
             "all of a request's images together, checked before any is decoded (a JPEG counts at the scale it "
             "is decoded at: 1/2 to 1/8 for large photos; [Requests](#requests) says how others count)"),
    Variable("MAX_DECODE_SECONDS", "`5`",
             "decoding time of one request: checked between its images, and a worker still decoding past it is "
             "killed and replaced (413; [Deadlines](#deadlines))"),
    Variable("MAX_BATCH_IMAGES", "`64`", "images in one JSON request"),
    Variable("SERVE_PRECISION", "`auto`",
             f"the arithmetic: one of {', '.join(f'`{p}`' for p in PRECISIONS)} ([Precision](#precision))"),
    Variable("SERVE_GRAPH", "`frozen`",
             "how a CPU runs a reduced precision: `frozen` (TorchScript) or `compiled` (torch.compile: faster "
             "answers, about 10 s more to start)"),
    Variable("SERVE_PROBABILITIES", "`false`", "`true`: every answer carries the full probability vector"),
    Variable("SERVE_BATCH_SIZE", "`1` (off)",
             "MMS's dynamic batching: up to this many requests arriving within `SERVE_MAX_BATCH_DELAY_MS` go to one "
             "worker and are answered with one forward (each keeps its own errors); more throughput under "
             "concurrent load, more latency alone (`docs/PERFORMANCE.md`)"),
    Variable("SERVE_MAX_BATCH_DELAY_MS", "`20`", "how long a batch waits for more requests after its first"),
    Variable("SERVE_DRAIN_SECONDS", "`25`",
             "how long SIGTERM waits for requests in flight (SageMaker kills 30 s after SIGTERM)"),
    Variable("SERVE_UNHEALTHY_SECONDS", "`30`", "how long no worker may be able to answer before `serve` exits 1"),
    Variable("SAGEMAKER_MODEL_SERVER_WORKERS", "one per GPU, else one per CPU (MMS's)", "workers per model"),
    Variable("SAGEMAKER_MODEL_SERVER_TIMEOUT", "`60`",
             "seconds a worker may take for one request; past it the worker is killed and replaced (504)"),
    Variable("SAGEMAKER_MODEL_SERVER_VMARGS", "`-XX:-UseContainerSupport` (the toolkit's)",
             "JVM arguments; unless they set `-Xmx`, the heap is bounded to 1/32 of the container's memory "
             "(256 to 512 MiB)"),
    Variable("OMP_NUM_THREADS", "`1` (MMS's)",
             "torch threads per worker; with 1, and no GPU, every worker is forked from one loaded model"),
)


def _text(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def _count(name: str, default: int) -> int:
    value = _text(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise SettingError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def _seconds(name: str, default: float) -> float:
    value = _text(name, str(default))
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise SettingError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def _choice(name: str, choices: tuple[str, ...]) -> str:
    value = _text(name, choices[0]).lower() or choices[0]
    if value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _flag(name: str) -> bool:
    return truthy(_text(name, "false"))  # as a hyperparameter says yes


# --- `serve` ------------------------------------------------------------------------------------
def port() -> int:
    value = _text("SAGEMAKER_BIND_TO_PORT", "8080")
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SettingError(f"SAGEMAKER_BIND_TO_PORT={value!r} is not a TCP port (1 to 65535)")
    return int(value)


def bind_host() -> str:
    """0.0.0.0 in a container (SageMaker's contract); 127.0.0.1 when run natively."""
    return _text("SERVE_HOST", "127.0.0.1" if "SAGEMAKER_BASE_DIR" in os.environ else "0.0.0.0")


def multi_model() -> bool:
    return _text("SAGEMAKER_MULTI_MODEL", "false").lower() == "true"  # "true" only, as SageMaker sets it


def batching() -> dict:
    """MMS's dynamic batching: up to SERVE_BATCH_SIZE requests (default 1: none) that arrive within
    SERVE_MAX_BATCH_DELAY_MS (default 20) of the first go to one worker, which answers them with
    one forward (transformer.py). It trades latency for throughput: a forward of several images
    costs less than as many single ones (docs/PERFORMANCE.md has the figures). MMS takes it only
    when a model is registered through its management API, not for one named at start-up, so
    with batching `serve` registers its model that way (front.py)."""
    return {"batch_size": _count("SERVE_BATCH_SIZE", 1), "max_batch_delay": _count("SERVE_MAX_BATCH_DELAY_MS", 20)}


def workers() -> int | None:
    """SAGEMAKER_MODEL_SERVER_WORKERS, or None for MMS's default."""
    return _count("SAGEMAKER_MODEL_SERVER_WORKERS", 1) if _text("SAGEMAKER_MODEL_SERVER_WORKERS", "") else None


def model_server_timeout() -> int:
    return _count("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60)  # whole seconds: the toolkit's int() reads it too


def drain_seconds() -> float:
    return _seconds("SERVE_DRAIN_SECONDS", 25)


def unhealthy_seconds() -> float:
    return _seconds("SERVE_UNHEALTHY_SECONDS", 30)


def single_threaded() -> bool:
    """Workers run torch on one thread: OMP_NUM_THREADS unset (MMS's worker then sets 1) or 1."""
    return _text("OMP_NUM_THREADS", "1") == "1"


def for_workers(run_dir: Path, payload_limit: int, package_parent: str) -> dict[str, str]:
    """What `serve` sets for MMS and its workers: the toolkit reads TEMP and the log folders, the
    workers import our package from package_parent, read the resolved payload limit and report a
    model's load into run_dir."""
    return {"TEMP": str(run_dir), "TMPDIR": str(run_dir), "LOG_LOCATION": str(Path(run_dir) / "logs"),
            "METRICS_LOCATION": str(Path(run_dir) / "logs"), "MAX_PAYLOAD_BYTES": str(payload_limit),
            STATE_DIR: str(run_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}


# --- the worker ---------------------------------------------------------------------------------
def max_payload_bytes() -> int:
    """Real-time endpoints get at most 6 MB; batch transform sets SAGEMAKER_MAX_PAYLOAD_IN_MB from
    MaxPayloadInMB (up to 100). `serve` resolves this once and passes it to the workers."""
    if _text("MAX_PAYLOAD_BYTES", ""):
        return _count("MAX_PAYLOAD_BYTES", 1)
    return _count("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6) * MIB


def max_pixels() -> int:
    return _count("MAX_IMAGE_PIXELS", 40_000_000)  # decompression-bomb guard


def max_request_pixels() -> int:
    """Pixels one request may decode in all, counted before any is decoded: a batch of images each
    under MAX_IMAGE_PIXELS cannot hold a worker for long. At 40 Mpx, counted as docs/SERVING.md
    says, the costliest admitted request takes well under a second of a worker (docs/PERFORMANCE.md)."""
    return _count("MAX_REQUEST_PIXELS", 40_000_000)


def max_decode_seconds() -> float:
    return _seconds("MAX_DECODE_SECONDS", 5)


def max_batch_images() -> int:
    return _count("MAX_BATCH_IMAGES", 64)


def precision() -> str:
    return _choice(PRECISION, PRECISIONS)


def graph() -> str:
    """'frozen' unless SERVE_GRAPH asks for 'compiled' (precision.py says why)."""
    return _choice("SERVE_GRAPH", GRAPHS)


def all_probabilities() -> bool:
    return _flag("SERVE_PROBABILITIES")


def state_dir() -> Path | None:
    return Path(os.environ[STATE_DIR]) if os.environ.get(STATE_DIR) else None


def check() -> None:
    """Read every variable once, so that `serve` refuses a bad value before it starts anything."""
    for read in (port, bind_host, multi_model, batching, workers, model_server_timeout, drain_seconds,
                 unhealthy_seconds, max_payload_bytes, max_pixels, max_request_pixels, max_decode_seconds,
                 max_batch_images, precision, graph):
        read()


def markdown_table() -> str:
    return variables.markdown_table(VARIABLES)


def help_text() -> str:
    """The variables for `serve --help`, without the docs' markup (links point to docs/SERVING.md)."""
    def plain(text: str) -> str:
        return text.replace(" ([Precision](#precision))", " (docs/SERVING.md)") \
            .replace("; [Deadlines](#deadlines))", "; docs/SERVING.md)") \
            .replace("; [Requests](#requests) says how others count)", "; docs/SERVING.md says how others count)")
    return variables.help_text(VARIABLES, plain)


if __name__ == "__main__":
    print(markdown_table(), end="")
