"""Files: writing one so that no reader ever sees half of it (write to a temporary name beside it
(this process's own: concurrent writers may race for one name), then rename it over the target,
which is atomic on one file system), and a file's checksum."""
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


def sha256(path: Path | str) -> str:
    """The file's SHA-256 in hex, read in 1 MiB pieces."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()
