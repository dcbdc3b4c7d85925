"""Writing a file so that no reader ever sees half of it: write to a temporary name beside it
(this process's own: concurrent writers may race for one name), then rename it over the target,
which is atomic on one file system."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> None:
    """write(tmp) writes the content to tmp; then tmp replaces path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left over when write or replace failed


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
