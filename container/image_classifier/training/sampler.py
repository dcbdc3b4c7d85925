"""The order of a training epoch: a shuffle fixed by (seed, epoch), so that a resumed epoch skips
exactly what was already trained, on any number of processes."""
from __future__ import annotations

import torch

from .data import mixed_seed
from .distributed import SINGLE, World


class EpochSampler(torch.utils.data.Sampler):
    """A shuffle fixed by (seed, epoch), so a resumed epoch can skip what was already trained.

    With several processes, each global step of `batch_size` is split into world.size equal
    parts and this rank yields its part: the same permutation and the same steps whatever the
    world size, so a checkpoint resumes exactly on any number of hosts.

    With seeded=True it yields (index, seed) keys for data.ImageDataset: each image's random
    augmentation is then fixed by (seed, epoch, index) too, so the rest of a resumed epoch is
    augmented as the uninterrupted run would have done it, in whichever worker or rank."""

    def __init__(self, n: int, seed: int, seeded: bool = False, world: World = SINGLE, batch_size: int = 1,
                 drop_last: bool = False):
        self.n, self.seed, self.seeded, self.epoch, self.skip = n, seed, seeded, 0, 0
        self.world, self.batch_size, self.drop_last = world, batch_size, drop_last

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self._mine(torch.randperm(self.n, generator=g)[self.skip:].tolist())
        if self.seeded:
            base = mixed_seed(self.seed, self.epoch)
            return iter([(i, (base + i) % 2**62) for i in order])
        return iter(order)

    def _mine(self, order: list[int]) -> list[int]:
        if not self.world.distributed:
            return order
        size, rank, step = self.world.size, self.world.rank, self.batch_size
        if self.drop_last:
            order = order[:len(order) - len(order) % step]
        mine = []
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            mine += chunk[rank * len(chunk) // size:(rank + 1) * len(chunk) // size]
        return mine

    def __len__(self) -> int:
        return len(self._mine(list(range(self.n - self.skip))))
