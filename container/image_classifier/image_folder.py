"""ImageFolder data sets: channels scanned (class names from folders, files that are not images
set aside with a reason), checks across channels, a stratified split when there is no 'valid'
channel. `train` reads its channels with it; the launch side checks and uploads a data set with it.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import random
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple


from .errors import TrainingError
from .preprocessing import open_image, to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_NUMBER_PREFIX = re.compile(r"^\d+[._\- ]+")


def class_name(folder: str) -> str:
    """'001.Affenpinscher' -> 'Affenpinscher'; a folder without a number prefix keeps its name."""
    return _NUMBER_PREFIX.sub("", folder) or folder


class Facts(NamedTuple):
    size: tuple[int, int]  # (width, height) as stored
    digest: str  # blake2b of the file's bytes: equal for exact copies


@dataclasses.dataclass
class Channel:
    name: str
    root: Path
    folders: list[str]  # class folders, sorted; the label index is the position here
    samples: list[tuple[str, int]]  # (path, label)
    skipped: list[tuple[str, str]]  # (path, reason) for every other file in the channel, once
    # path -> what scan learnt when it read the file: its size as stored, a digest of its bytes
    facts: dict[str, Facts] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return [class_name(f) for f in self.folders]

    def counts(self) -> Counter:
        return Counter(label for _, label in self.samples)


def scan(name: str, root: Path) -> Channel:
    """Read an ImageFolder channel. Every file in it is either a sample or in `skipped` with the
    reason, once; each image is decoded here, so that a class none of whose files decode fails the
    job before it trains."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"channel '{name}' not found at {root}")
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise TrainingError(f"channel '{name}' cannot be read at {root}: {e.strerror}") from None
    folders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise TrainingError(f"channel '{name}' has no class folders (expected {name}/<class>/<image>)")
    names = Counter(class_name(f) for f in folders)
    clashes = sorted(n for n, c in names.items() if c > 1)
    if clashes:
        raise TrainingError(f"channel '{name}' has several folders for class(es): {', '.join(clashes)}")
    labels = {f: i for i, f in enumerate(folders)}
    candidates, skipped, top = [], [], frozenset([root.resolve()])
    for entry in entries:
        for path, found in _files(entry, top):
            reason = _reason(path.relative_to(root), found, entry.name in labels)
            if reason:
                skipped.append((str(path), reason))
            else:
                candidates.append((str(path), labels[entry.name]))
    samples, facts = [], {}
    for (path, label), (reason, found) in zip(candidates, _decode([p for p, _ in candidates])):
        if reason:
            skipped.append((path, reason))
        else:
            samples.append((path, label))
            facts[path] = found
    channel = Channel(name, root, folders, samples, sorted(skipped), facts)
    if not samples:
        found = f"{len(skipped)} file(s) found, all skipped: " if skipped else "no files found under the class folders"
        raise TrainingError(f"channel '{name}' has no images: {found}{_summary(channel)}")
    empty = [class_name(f) for i, f in enumerate(folders) if channel.counts()[i] == 0]
    if empty:
        raise TrainingError(f"channel '{name}' has no readable images for class(es): {', '.join(empty)}")
    if skipped:
        log.warning("channel '%s': skipped %d file(s) that are not images it can read: %s",
                    name, len(skipped), _summary(channel))
    return channel


def _summary(channel: Channel, most: int = 4) -> str:
    """'50 cannot be decoded (e.g. train/a/0.jpg: <detail>); 3 not an image extension (e.g. ...)':
    one line, most frequent kind first. A reason's kind is its text before ':' (what follows is
    per file), so thousands of files read as a few kinds with one example each."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for path, reason in channel.skipped:  # sorted, so each example is the first path of its kind
        kinds.setdefault(reason.split(":")[0].strip(), []).append((path, reason))
    ranked = sorted(kinds.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    parts = []
    for kind, files in ranked[:most]:
        path, reason = files[0]
        detail = reason.partition(":")[2].strip()
        example = f"{channel.name}/{os.path.relpath(path, channel.root)}" + (f": {detail}" if detail else "")
        parts.append(f"{len(files)} {kind} (e.g. {example})")
    if len(ranked) > most:
        parts.append(f"and {len(ranked) - most} more kind(s)")
    return " ".join("; ".join(parts).split())  # one line even if a path or error text holds a newline


def _files(path: Path, ancestors: frozenset[Path]) -> Iterator[tuple[Path, str | None]]:
    """`path` and, for a folder, everything below it (symlinks followed), in sorted order: each
    file with None, or with what is wrong with it; a folder only when something is wrong with it."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        yield path, _unreachable(path, e)
        return
    if not stat.S_ISDIR(mode):
        yield path, None if stat.S_ISREG(mode) else "not a regular file"
        return
    real = path.resolve()
    if real in ancestors:
        yield path, "symlink loop"
        return
    try:
        children = sorted(path.iterdir())
    except OSError as e:
        yield path, f"folder cannot be read: {e.strerror}"
        return
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        yield path, "a folder, not an image file"
    for child in children:
        yield from _files(child, ancestors | {real})


def _unreachable(path: Path, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if path.is_symlink() and error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "dangling symlink"
    return f"cannot be read: {error.strerror}"


def _reason(relative: Path, found: str | None, in_class_folder: bool) -> str | None:
    """Why a file found in the channel is not a sample, before decoding it; None if it may be one."""
    if relative.name.startswith("."):
        return "hidden file"
    if any(part.startswith(".") for part in relative.parts):
        return "in a hidden folder"
    if found:
        return found
    if not in_class_folder:
        return "not in a class folder"
    if relative.suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image extension"
    return None


def _decode(paths: list[str]) -> list[tuple[str | None, Facts | None]]:
    """Decode every image as training will (at the smallest JPEG draft scale: the whole file is
    still read), in threads: Pillow's decoders and hashlib release the GIL. (why not, or None;
    the file's Facts, the one read the data audit needs)."""
    with warnings.catch_warnings():  # once, here: the filter is global, threads share it
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
            return list(pool.map(_decode_one, paths))


def _decode_one(path: str) -> tuple[str | None, Facts | None]:
    try:
        raw = Path(path).read_bytes()
        if not raw:  # Pillow's own word for it names a BytesIO object
            return "empty file (0 bytes)", None
        with open_image(raw) as image:
            size = image.size  # before draft() shrinks it
            to_rgb(image, draft_size=1)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files
        return f"cannot be decoded: {type(e).__name__}: {e}", None
    return None, Facts(size, hashlib.blake2b(raw, digest_size=16).hexdigest())


def check_same_classes(train: Channel, other: Channel) -> None:
    extra = sorted(set(other.folders) - set(train.folders))
    missing = sorted(set(train.folders) - set(other.folders))
    problems = []
    if extra:
        problems.append(f"{other.name} has classes not in train: {', '.join(map(class_name, extra))}")
    if missing:
        problems.append(f"{other.name} lacks classes of train: {', '.join(map(class_name, missing))}")
    if problems:
        raise TrainingError("; ".join(problems))


def stratified_split(channel: Channel, fraction: float, seed: int) -> tuple[Channel, Channel]:
    """Hold out `fraction` of each class (at least one image) as a validation channel."""
    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for sample in channel.samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, valid = [], []
    for label, items in sorted(by_class.items()):
        if len(items) < 2:
            raise TrainingError(
                f"class '{channel.classes[label]}' has {len(items)} image(s) in train: need at least 2 "
                "to hold some out for validation, or give a 'valid' channel")
        items = items[:]
        rng.shuffle(items)
        n_valid = max(1, round(len(items) * fraction))
        valid += items[:n_valid]
        train += items[n_valid:]
    # Named "valid": it is the valid channel to everything downstream (metric lines, evaluation files).
    return (Channel("train", channel.root, channel.folders, sorted(train), channel.skipped, channel.facts),
            Channel("valid", channel.root, channel.folders, sorted(valid), [], channel.facts))
