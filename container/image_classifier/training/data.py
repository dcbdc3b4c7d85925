"""Batches of images for training and evaluation: a Dataset that skips images it cannot decode,
DataLoaders with worker processes sized to the cores, and the seeds that fix each image's random
augmentation.
"""
from __future__ import annotations

import logging
import os

import torch
from PIL import Image

from ..preprocessing import to_rgb
from . import environment

log = logging.getLogger(__name__)


def mixed_seed(seed: int, round_: int) -> int:
    """The seed of one epoch's (or one cached view's) augmentations; image i's is this + i."""
    return ((seed * 1_000_003 + round_) * 1_000_003) % 2**62


class ImageDataset(torch.utils.data.Dataset):
    """(tensor, label) pairs; an image that fails to decode yields None and is dropped by collate
    (scan decoded it, but a file can change during a job)."""

    def __init__(self, samples: list[tuple[str, int]], transform, draft_size: int | None = None):
        self.samples = samples
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        """key: an index, or (index, seed) to fix this draw's random transform (torch's RNG)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            torch.manual_seed(seed)
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return self.transform(to_rgb(image, self.draft_size)), label
        except Exception as e:  # noqa: BLE001 - one changed file must not end the job
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
    """-1: this process's share of the cores (torchrun's LOCAL_WORLD_SIZE processes share a host)."""
    if requested >= 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) // environment.processes_on_this_host())


def _worker_init(worker_id: int) -> None:
    # A loader worker decodes and transforms one image at a time; torch's default of one
    # thread per core in every worker oversubscribes the CPU.
    torch.set_num_threads(1)
    # A stop is the training process's to handle: torchrun signals a rank's whole process group
    # (os.killpg), and a worker that died of it would fail the rank before it saved its
    # checkpoint. In a group of its own the worker is not signalled with the rank; it still ends
    # when its parent tells it, terminates it (multiprocessing, at exit) or dies (torch's watchdog).
    os.setpgid(0, 0)


def loader(dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False):
    """Worker processes sized to the cores (num_workers=-1), one torch thread each, pinned memory on a GPU."""
    workers = resolve_workers(num_workers)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=workers, persistent_workers=workers > 0, collate_fn=collate, worker_init_fn=_worker_init,
        pin_memory=torch.cuda.is_available())
