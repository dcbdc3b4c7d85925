"""ImageFolder channels: class names from folders, checks across channels, a stratified split
when there is no 'valid' channel, and a Dataset that skips images it cannot decode.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import warnings
from collections import Counter
from pathlib import Path

import torch
from PIL import Image

from .errors import TrainingError
from .preprocessing import to_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
_NUMBER_PREFIX = re.compile(r"^\d+[._\- ]+")


def class_name(folder: str) -> str:
    """'001.Affenpinscher' -> 'Affenpinscher'; a folder without a number prefix keeps its name."""
    return _NUMBER_PREFIX.sub("", folder) or folder


@dataclasses.dataclass
class Channel:
    name: str
    root: Path
    folders: list[str]  # class folders, sorted; the label index is the position here
    samples: list[tuple[str, int]]  # (path, label)
    skipped: list[tuple[str, str]]  # (path, reason) for files that are not readable images

    @property
    def classes(self) -> list[str]:
        return [class_name(f) for f in self.folders]

    def counts(self) -> Counter:
        return Counter(label for _, label in self.samples)


def scan(name: str, root: Path) -> Channel:
    """Read an ImageFolder channel; verify each image's header and skip what will not decode."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"channel '{name}' not found at {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise TrainingError(f"channel '{name}' has no class folders (expected {name}/<class>/<image>)")
    names = Counter(class_name(f) for f in folders)
    clashes = sorted(n for n, c in names.items() if c > 1)
    if clashes:
        raise TrainingError(f"channel '{name}' has several folders for class(es): {', '.join(clashes)}")
    samples, skipped = [], []
    for label, folder in enumerate(folders):
        for path in sorted((root / folder).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((str(path), "not an image file extension"))
                continue
            reason = _unreadable(path)
            if reason:
                skipped.append((str(path), reason))
            else:
                samples.append((str(path), label))
    channel = Channel(name, root, folders, samples, skipped)
    if not samples:
        raise TrainingError(f"channel '{name}' has no images")
    empty = [class_name(f) for i, f in enumerate(folders) if channel.counts()[i] == 0]
    if empty:
        raise TrainingError(f"channel '{name}' has no readable images for class(es): {', '.join(empty)}")
    if skipped:
        log.warning("channel '%s': skipped %d file(s) that are not readable images, e.g. %s (%s)",
                    name, len(skipped), skipped[0][0], skipped[0][1])
    return channel


def _unreadable(path: Path) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.verify()
    except Exception as e:  # Pillow raises many types for broken files
        return f"{type(e).__name__}: {e}"
    return None


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
    return (Channel("train", channel.root, channel.folders, sorted(train), channel.skipped),
            Channel("valid (split from train)", channel.root, channel.folders, sorted(valid), []))


class ImageDataset(torch.utils.data.Dataset):
    """(tensor, label) pairs; an image that fails to decode yields None and is dropped by collate."""

    def __init__(self, samples: list[tuple[str, int]], transform, draft_size: int | None = None):
        self.samples = samples
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return self.transform(to_rgb(image, self.draft_size)), label
        except Exception as e:  # a file that passed verify() may still be truncated
            log.warning("skipping %s: %s: %s", path, type(e).__name__, e)
            return None


def collate(batch):
    """Stack the decodable samples; report how many were dropped so the loop can count them."""
    good = [b for b in batch if b is not None]
    if not good:
        return None, None, len(batch)
    images, labels = torch.utils.data.default_collate(good)
    return images, labels, len(batch) - len(good)


def resolve_workers(requested: int) -> int:
    return len(os.sched_getaffinity(0)) if requested < 0 else requested


def _one_thread(worker_id: int) -> None:
    # A loader worker decodes and transforms one image at a time; torch's default of one
    # thread per core in every worker oversubscribes the CPU.
    torch.set_num_threads(1)


def loader(dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False):
    """Worker processes sized to the cores (num_workers=-1), one torch thread each, pinned memory on a GPU."""
    workers = resolve_workers(num_workers)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=workers, persistent_workers=workers > 0, collate_fn=collate, worker_init_fn=_one_thread,
        pin_memory=torch.cuda.is_available())
