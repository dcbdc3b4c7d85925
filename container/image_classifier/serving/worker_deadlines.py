"""What each MMS worker is working on and until when, so that `serve` can stop one that overruns.

A worker blocked in C code (a decoder, a forward) cannot look at a clock, and MMS neither kills nor
replaces a worker whose request timed out: one went on decoding for minutes while /ping said
Healthy. So before each phase of a request the worker writes a small file into `serve`'s run
directory ($SERVE_STATE_DIR): the front's ids of the requests it holds, the phase, when it began
and its deadline, on CLOCK_MONOTONIC, which every process on the machine shares. The front reads
them twice a second (front.py): it SIGKILLs a worker past its deadline, MMS starts another, and the
front answers the requests that worker held. A phase's deadline: MAX_DECODE_SECONDS to decode one
request, SAGEMAKER_MODEL_SERVER_TIMEOUT for the forward.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from .. import files
from . import environment

PREFIX = "busy."
REQUEST_HEADER = "X-Serve-Request"  # the front's id of a request, passed through MMS to the worker
DECODE, PREDICT = "decode", "predict"


@dataclasses.dataclass(frozen=True)
class Busy:
    pid: int
    requests: tuple[str, ...]
    phase: str
    since: float  # time.monotonic()
    deadline: float


def mark(requests: list[str], phase: str, seconds: float) -> None:
    """This worker now holds `requests` in `phase`, for at most `seconds`."""
    folder = environment.state_dir()
    if folder is None:  # in-process use (tests, benchmarks): nobody watches
        return
    now = time.monotonic()
    record = {"requests": list(requests), "phase": phase, "since": now, "deadline": now + seconds}
    files.atomic_write_text(folder / f"{PREFIX}{os.getpid()}", json.dumps(record))


def clear() -> None:
    folder = environment.state_dir()
    if folder is not None:
        (folder / f"{PREFIX}{os.getpid()}").unlink(missing_ok=True)


def read_all(folder: Path) -> list[Busy]:
    """Every worker's current record; a record removed or half-written meanwhile is skipped."""
    found = []
    for entry in os.scandir(folder):
        if not entry.name.startswith(PREFIX) or not entry.name[len(PREFIX):].isdigit():
            continue
        try:
            record = json.loads(Path(entry.path).read_text())
            found.append(Busy(int(entry.name[len(PREFIX):]), tuple(record["requests"]), record["phase"],
                              float(record["since"]), float(record["deadline"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def forget(folder: Path, pid: int) -> None:
    """A killed worker's record (it cannot remove it itself)."""
    (Path(folder) / f"{PREFIX}{pid}").unlink(missing_ok=True)
