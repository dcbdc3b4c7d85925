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


_file: tuple[int, int] | None = None  # (pid, descriptor): this worker's record, opened once


def _descriptor(folder: Path) -> int:
    """The record file, opened once per process (MMS forks workers: a child opens its own)."""
    global _file
    if _file is None or _file[0] != os.getpid():
        _file = os.getpid(), os.open(folder / f"{PREFIX}{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return _file[1]


def mark(requests: list[str], phase: str, seconds: float) -> None:
    """This worker now holds `requests` in `phase`, for at most `seconds`. Written in place (0.03 ms
    a request, against 0.4 ms for a write-and-rename and an unlink): a reader that catches it
    half-written skips it and reads it again a quarter of a second later."""
    folder = environment.state_dir()
    if folder is None:  # in-process use (tests, benchmarks): nobody watches
        return
    now = time.monotonic()
    record = json.dumps({"requests": list(requests), "phase": phase, "since": now, "deadline": now + seconds})
    fd = _descriptor(folder)
    os.pwrite(fd, record.encode(), 0)
    os.ftruncate(fd, len(record))


def clear() -> None:
    """Nothing held: the record is emptied (an idle worker's file stays, empty, until `serve` exits)."""
    folder = environment.state_dir()
    if folder is not None:
        os.ftruncate(_descriptor(folder), 0)


def read_all(folder: Path) -> list[Busy]:
    """Every busy worker's current record; an empty one (idle), or one half-written or removed
    meanwhile, is skipped."""
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
