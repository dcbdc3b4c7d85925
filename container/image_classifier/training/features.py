"""Cached backbone features for trainable=head: a frozen backbone gives every image the same
features each time it sees the same pixels, so they are computed once and the head trains on them.

- Training images: `views` fixed augmentations per image (RandomResizedCrop + flip, drawn from
  (seed, view, image index), so they do not depend on batch size or workers). Epoch e trains on
  view e mod `views`; only the first `views` epochs run the backbone.
- Validation images: the evaluation transform, fp32, as `evaluate` on the full model sees them.
- With several processes each computes its shard of the images and they share the rows; the
  leader alone reads and writes the cache folder, and hands what it read to the others.
- A cache folder (`feature-cache-dir`) keeps them across jobs: local tuning trials with the same
  backbone weights, image size, precision and data reuse the first trial's. The key hashes the
  frozen weights themselves, the preprocessing, the view and each file's name, size and mtime.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from .. import models, precision
from ..artifact import atomic_save
from . import data, distributed
from .distributed import SINGLE, World
from ..image_folder import Channel
from ..preprocessing import NO_AUGMENTATION, Augmentation, eval_transform

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what a cache file holds changes


class Head(nn.Module):
    """The model's classifier alone. It is named like the model and holds the classifier under
    the same module path (e.g. head.fc), so that Debugger's tensor names match the full model's."""

    def __init__(self, model: nn.Module, path: str):
        super().__init__()
        self.path, self.model_name = path, type(model).__name__
        *parents, last = path.split(".")
        holder = self
        for name in parents:
            holder.add_module(name, nn.Module())
            holder = getattr(holder, name)
        holder.add_module(last, model.get_submodule(path))  # shared: training it trains the model's head

    def _get_name(self) -> str:
        return self.model_name

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return models.classify(self.get_submodule(self.path), features)


class Features(SimpleNamespace):
    """features [N, D] and labels [N] in sample order; ok[i] is False where image i did not decode."""
    features: torch.Tensor
    labels: torch.Tensor
    ok: torch.Tensor


class _IndexedViews(data.ImageDataset):
    """(tensor, index) per image; with a seed, image i's random transform is fixed by seed + i."""

    def __init__(self, samples, transform, draft_size, seed: int | None):
        super().__init__(samples, transform, draft_size)
        self.seed = seed

    def __getitem__(self, index: int):
        if self.seed is not None:
            torch.manual_seed(self.seed + index)
        item = super().__getitem__(index)
        return None if item is None else (item[0], index)


def weights_digest(model: nn.Module, head_attr: str) -> str:
    """What the frozen backbone computes, as a hash of its tensors (weights and BN statistics)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(head_attr + "."):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def samples_digest(samples: list[tuple[str, int]], root: Path) -> str:
    """The data as file names (relative to the channel), sizes, mtimes and labels."""
    h = hashlib.blake2b(digest_size=16)
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
    return h.hexdigest()


class FeatureCache:
    """Features for one model and one channel: in memory, and in `directory` when one is given."""

    def __init__(self, directory: str | Path | None, model: nn.Module, head_attr: str, pre, amp, device, *,
                 seed: int, batch_size: int, num_workers: int, world: World = SINGLE):
        self.directory = Path(directory) if directory else None
        self.world = world
        self.model, self.head_attr, self.pre, self.amp, self.device = model, head_attr, pre, amp, device
        self.seed, self.batch_size, self.num_workers = seed, batch_size, num_workers
        self.weights = weights_digest(model, head_attr)
        self.memory: dict[tuple[str, str], Features] = {}

    def train_view(self, channel: Channel, view: int, transform, stop=None, aug: Augmentation = NO_AUGMENTATION
                   ) -> Features:
        """aug: what `transform` adds to the crop and flip (in the key; the default, as before it existed, not)."""
        seed = data.mixed_seed(self.seed, view)  # + image index, per image
        spec = dict(view=view, seed=seed, precision=precision.name(self.amp))
        if aug != NO_AUGMENTATION:
            spec["augmentation"] = aug.to_json()
        return self._get(channel, spec, transform, self.pre.image_size, seed, self.amp, stop)

    def eval_view(self, channel: Channel, stop=None) -> Features:
        """Features of the evaluation transform: the key names the preprocessing, the transform follows it."""
        return self._get(channel, dict(view="eval", precision="fp32"), eval_transform(self.pre), self.pre.resize_size,
                         None, None, stop)

    def _get(self, channel, spec, transform, draft_size, seed, amp, stop) -> Features:
        known = (channel.name, json.dumps(spec, sort_keys=True))  # every epoch asks again: no stat() then
        if known in self.memory:
            return self.memory[known]
        key = hashlib.blake2b(json.dumps(dict(
            format=FORMAT, weights=self.weights, preprocessing=self.pre.to_json(), torch=torch.__version__,
            samples=samples_digest(channel.samples, channel.root), **spec), sort_keys=True).encode(),
            digest_size=16).hexdigest()
        path = self.directory / f"{key}.pt" if self.directory else None
        found = distributed.from_leader(self.world, lambda: _read(path)) if path is not None else None
        if found is not None:
            log.info("%s features (%s): from %s", channel.name, _label(spec), path)
            self.memory[known] = found
            return found
        started = time.perf_counter()
        found = self._extract(channel.samples, transform, draft_size, seed, amp, stop)
        seconds = time.perf_counter() - started
        mine = len(distributed.shard(self.world, channel.samples))
        log.info("%s features (%s): %d images through the backbone in %.1f s (%.1f img/s)%s", channel.name,
                 _label(spec), mine, seconds, mine / max(seconds, 1e-9),
                 f", this process's share of {len(channel.samples)}" if self.world.distributed else "")
        if path is not None and self.world.leader:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_save(vars(found), path)  # trials may race for a key
        self.memory[known] = found
        return found

    @torch.no_grad()
    def _extract(self, samples, transform, draft_size, seed, amp, stop) -> Features:
        """Run the backbone in eval mode, as evaluation and serving do, and keep what the head receives
        (this rank's shard of the images; the rows are then shared)."""
        mine = distributed.shard(self.world, list(range(len(samples))))
        batch = self.batch_size // self.world.size
        loader = data.loader(_IndexedViews(samples, transform, draft_size, seed), batch, self.num_workers,
                             sampler=mine)
        # Every rank takes the same number of turns (shards differ by one image at most), and at each
        # all agree whether a SIGTERM reached any of them, so that all stop at the same point.
        turns = math.ceil(math.ceil(len(samples) / self.world.size) / batch)
        out = torch.zeros(len(samples), models.classifier_width(self.model, self.head_attr))
        ok = torch.zeros(len(samples), dtype=torch.bool)
        # What the classifier would receive; the classifier itself is not called: it is Debugger's,
        # and a forward outside a training step would confuse the hook.
        was_training = self.model.training
        self.model.eval()
        try:
            batches = iter(loader)
            for _ in range(turns):
                if distributed.anyone(self.world, [stop is not None and stop.requested], self.device)[0]:
                    raise Interrupted()
                images, index, _ = next(batches, (None, None, 0))
                if images is None:
                    continue
                with precision.autocast(amp, self.device):
                    out[index] = models.pre_logits(self.model, models.batch_to(images, self.device)).float().cpu()
                ok[index] = True
        finally:
            self.model.train(was_training)
        out = distributed.gather_rows(self.world, out, self.device)
        ok = distributed.gather_rows(self.world, ok.to(torch.int32), self.device) > 0
        return Features(features=out, labels=torch.tensor([label for _, label in samples]), ok=ok)


def _read(path: Path) -> Features | None:
    if not path.exists():
        return None
    try:
        return Features(**torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - a damaged cache file is recomputed, not fatal
        log.warning("ignoring unreadable feature cache file %s: %s: %s", path, type(e).__name__, e)
        return None


def _label(spec: dict) -> str:
    return "evaluation transform" if spec["view"] == "eval" else f"augmented view {spec['view']}"


class Interrupted(Exception):
    """SIGTERM arrived while features were being computed."""


def batches(found: Features, order: list[int], batch_size: int, drop_last: bool):
    """(features, labels, n_failed) per step, in `order`, as the image loader would batch them.

    The caller's loop runs with one torch thread until the last batch: a head step is a few small
    matmuls, where a second thread only waits at barriers (docs/PERFORMANCE.md has the figures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            index = torch.tensor(order[start:start + batch_size])
            good = index[found.ok[index]]
            if len(good) == 0:
                yield None, None, len(index)
            else:
                yield found.features[good], found.labels[good], len(index) - len(good)
    finally:
        torch.set_num_threads(threads)
