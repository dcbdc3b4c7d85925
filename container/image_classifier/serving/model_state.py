"""How an MMS worker tells `serve` that the model loaded, or why it did not.

MMS answers /ping with 200 from the moment its workers are up, whether or not any of them has
the model, and a worker whose load failed stays up answering every request with a 500. So the
worker that loads the single model writes a file into `serve`'s run directory ($SERVE_STATE_DIR),
and `serve` logs "model loaded" when it appears, or stops with the reason when loading failed.
"""
from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "SERVE_STATE_DIR"
LOADED, FAILED = "model-loaded", "model-failed"
READY_LINE = "model loaded; ready to answer"  # `serve` logs this when /ping turns 200


def _write(name: str, text: str) -> None:
    folder = os.environ.get(STATE_DIR_ENV)
    if not folder:
        return
    tmp = Path(folder) / f".{name}.{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, Path(folder) / name)  # `serve` never reads half a reason


def report_loaded() -> None:
    _write(LOADED, str(os.getpid()))


def report_failed(reason: str) -> None:
    _write(FAILED, reason)


def read(folder: Path) -> tuple[bool, str | None]:
    """(loaded, failure reason or None)."""
    failed = folder / FAILED
    return (folder / LOADED).exists(), failed.read_text() if failed.exists() else None
