"""How an MMS worker tells `serve` that a model loaded, or why it did not.

MMS answers /ping with 200 from the moment its workers are up, whether or not any of them has
the model, and a worker whose load failed stays up answering every request with a 500. So the
worker writes a file into `serve`'s run directory ($SERVE_STATE_DIR) when it has loaded a model:
for the single model, `serve` logs "model loaded" when it appears, or stops with the reason; on a
multi-model endpoint, `POST /models` answers with the outcome (per model name).
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import files
from . import environment

LOADED, FAILED = "model-loaded", "model-failed"
READY_LINE = "model loaded; ready to answer"  # `serve` logs this when /ping turns 200


def _write(name: str, text: str) -> None:
    folder = environment.state_dir()
    if folder is None:
        return
    files.atomic_write_text(folder / name, text)  # `serve` never reads half a reason


# Why a load failed, for the status a multi-model POST /models answers with.
ARTIFACT, RESOURCES, OTHER = "artifact", "resources", "other"


def _name(kind: str, model: str | None) -> str:
    return f"{kind}.{model}" if model else kind


def report_loaded(model: str | None = None) -> None:
    _write(_name(LOADED, model), str(os.getpid()))


def report_failed(reason: str, model: str | None = None, cause: str = OTHER) -> None:
    _write(_name(FAILED, model), f"{cause}\n{reason}")


def read(folder: Path, model: str | None = None) -> tuple[bool, str | None]:
    """(loaded, failure reason or None)."""
    loaded, cause_reason = read_cause(folder, model)
    return loaded, cause_reason[1] if cause_reason else None


def read_cause(folder: Path, model: str | None = None) -> tuple[bool, tuple[str, str] | None]:
    """(loaded, (cause, reason) of a failure or None)."""
    failed = Path(folder) / _name(FAILED, model)
    cause_reason = tuple(failed.read_text().split("\n", 1)) if failed.exists() else None
    return (Path(folder) / _name(LOADED, model)).exists(), cause_reason


def forget(folder: Path, model: str) -> None:
    """A model unloaded: a later load of the same name reports afresh."""
    for kind in (LOADED, FAILED):
        (Path(folder) / _name(kind, model)).unlink(missing_ok=True)
