"""Fine-tune an ImageNet CNN on ImageFolder channels. `run` reads top to bottom:
channels -> model and batch source -> resume -> epochs (train_one_epoch, end_epoch: validate,
checkpoint) -> test_and_save. `Progress` is where training stands (the checkpoint's format); a
batch source gives each epoch's steps: ImageBatches (decoded, augmented images) or, with
trainable=head and cache-features, FeatureBatches (the head on cached backbone features,
features.py): the same steps, the same shuffle, a fraction of the time.

With several processes (GPUs, hosts: distributed.py) each trains on its shard of every global
batch under DistributedDataParallel, validation and test are sharded and summed, and only the
leader prints metric lines and writes files.

`run` is called by the image's `train` program (image_classifier.job) with what
sagemaker-training parsed; nothing here knows about SageMaker's files.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from . import (artifact, audit, checkpoint, data, distributed, evaluation, features, gallery, hyperparameters,
               metrics, models, paths, precision, tensorboard)
from .debugger import Debugger
from .distributed import SINGLE, World
from .profiling import Profiling
from .serving import precision as serving_precision
from .errors import TrainingError, described
from .preprocessing import eval_transform, train_transform

log = logging.getLogger(__name__)

CHANNELS = ("train", "valid", "test", "pretrained")


class Stopped(Exception):
    """SIGTERM arrived; the state is checkpointed and a rerun resumes from it."""


class StopFlag:
    """Set by SIGTERM (SageMaker's stop and spot interruption); the loop checks it every step."""

    def __init__(self):
        self.requested = False

    def install(self) -> "StopFlag":
        signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        log.warning("SIGTERM received: finishing this step, then saving a checkpoint")
        self.requested = True


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
            base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
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


def load_channels(channels: dict[str, Path], hp) -> tuple[data.Channel, data.Channel, data.Channel | None]:
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise TrainingError(f"unknown channel(s): {', '.join(unknown)} (expected {', '.join(CHANNELS)})")
    if "train" not in channels:
        raise TrainingError("no 'train' channel: give one with class folders of images")
    train = data.scan("train", channels["train"])
    if len(train.folders) < 2:
        raise TrainingError(f"channel 'train' has {len(train.folders)} class folder; need at least 2 classes")
    if "valid" in channels:
        valid = data.scan("valid", channels["valid"])
        data.check_same_classes(train, valid)
    else:
        train, valid = data.stratified_split(train, hp.valid_fraction, hp.seed)
        log.info("no 'valid' channel: held out %d of %d train images (stratified)", len(valid.samples),
                 len(valid.samples) + len(train.samples))
    test = None
    if "test" in channels:
        test = data.scan("test", channels["test"])
        data.check_same_classes(train, test)
    return train, valid, test


def pretrained_file(channels: dict[str, Path], backbone: str) -> Path | None:
    if "pretrained" not in channels:
        return None
    root = Path(channels["pretrained"])
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".pt", ".pth", ".bin"))
    named = [p for p in files if p.stem == backbone]
    if len(files) == 1 or len(named) == 1:
        return (named or files)[0]
    if not files:
        raise TrainingError(f"channel 'pretrained' has no .pt/.pth weights file (looked in {root})")
    raise TrainingError(f"channel 'pretrained' has {len(files)} weights files; name one {backbone}.pt")


def make_loader(samples, transform, draft_size, hp, batch_size, sampler=None, drop_last=False):
    return data.loader(data.ImageDataset(samples, transform, draft_size), batch_size, hp.num_workers, sampler,
                       drop_last)


def build_optimizer(params, hp) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=True)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion, device, debug: Debugger | None = None,
             world: World = SINGLE) -> SimpleNamespace:
    """Loss and accuracy over the loader; with several processes each passes its shard and the
    sums are added up, so every image counts once."""
    model.eval()
    if debug:
        debug.eval()
    loss_sum, correct, seen, failed = 0.0, 0, 0, 0
    for inputs, labels, n_failed in loader:  # images, or cached features
        failed += n_failed
        if inputs is None:
            continue
        inputs, labels = models.batch_to(inputs, device), labels.to(device, non_blocking=True)
        logits = model(inputs)
        loss_sum += criterion(logits, labels).item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    loss_sum, correct, seen, failed = distributed.total(world, [loss_sum, correct, seen, failed], device)
    seen, correct, failed = int(seen), int(correct), int(failed)
    return SimpleNamespace(loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1), seen=seen, failed=failed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


FEATURE_CACHE_ROOT = "FEATURE_CACHE_ROOT"  # set by whoever runs the job, never by a hyperparameter


def folders(hp) -> SimpleNamespace:
    """The folders that path hyperparameters name, checked before anything is written. debug-dir is
    inside /opt/ml/output; so is a relative feature-cache-dir, while an absolute one is a folder kept
    across jobs: inside /opt/ml (e.g. /opt/ml/checkpoints/features, which SageMaker syncs to S3) or
    inside $FEATURE_CACHE_ROOT (the local tuner's shared cache beside its trials' /opt/ml trees)."""
    debug = paths.inside(paths.output_dir(), hp.debug_dir, "debug-dir") if hp.debug_dir else None
    cache = None
    if Path(hp.feature_cache_dir).is_absolute():
        root = Path(os.environ.get(FEATURE_CACHE_ROOT) or paths.base_dir())
        cache = paths.inside(root, hp.feature_cache_dir, "feature-cache-dir")
    elif hp.feature_cache_dir:
        cache = paths.inside(paths.output_dir(), hp.feature_cache_dir, "feature-cache-dir")
    return SimpleNamespace(debug=debug, feature_cache=cache)


@dataclasses.dataclass
class Progress:
    """Where training stands; the checkpoint keeps it (as JSON), so a rerun resumes at this step."""
    epoch: int = 0  # epochs finished
    batches_done: int = 0  # steps of the current epoch
    loss_sum: float = 0.0  # the current epoch's running sums
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    failed: int = 0  # undecodable images, all epochs
    best_acc: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best one
    history: list = dataclasses.field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Progress":
        return cls(**json.loads(text))

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batches_done, self.loss_sum, self.correct, self.seen, self.seconds = 0, 0.0, 0, 0, 0.0


class ImageBatches:
    """Each step decodes and augments images (DataLoaders) and runs the whole network."""

    def __init__(self, model, train_ch, valid_ch, pre, hp, sampler, drop_last, world):
        self.net = model
        self.blank = torch.zeros(1, 3, pre.image_size, pre.image_size)  # a step's input shape
        batch = hp.batch_size // world.size
        self._train = make_loader(train_ch.samples, train_transform(pre), pre.image_size, hp, batch, sampler,
                                  drop_last)
        self._valid = make_loader(distributed.shard(world, valid_ch.samples), eval_transform(pre), pre.resize_size,
                                  hp, batch)

    def train(self, epoch: int, stop: StopFlag):
        return self._train

    def valid(self):
        return self._valid


class FeatureBatches:
    """Each step runs the head on the frozen backbone's cached features (features.py); the backbone
    runs in the first feature-views epochs only, when train() computes that epoch's view."""

    def __init__(self, cache, model, backbone, train_ch, valid_ch, pre, hp, sampler, drop_last, world):
        self.net = features.Head(model, backbone.head)
        self.blank = torch.zeros(1, getattr(model, backbone.head).in_features)
        self.cache, self.train_ch, self.valid_ch, self.pre, self.hp = cache, train_ch, valid_ch, pre, hp
        self.sampler, self.drop_last, self.world = sampler, drop_last, world
        self.batch = hp.batch_size // world.size

    def train(self, epoch: int, stop: StopFlag):
        view = self.cache.train_view(self.train_ch, epoch % self.hp.feature_views, train_transform(self.pre), stop)
        return features.batches(view, list(self.sampler), self.batch, self.drop_last)

    def valid(self):
        view = self.cache.eval_view(self.valid_ch)
        order = distributed.shard(self.world, list(range(len(self.valid_ch.samples))))
        return features.batches(view, order, self.batch, False)


@dataclasses.dataclass
class Job:
    """What the steps of a run share."""
    hp: SimpleNamespace
    model: nn.Module  # the whole network: checkpointed and saved
    net: nn.Module  # what a step runs: the model, or its head on cached features (evaluation runs it)
    step_net: nn.Module  # net, in DistributedDataParallel with several processes
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: object
    amp: object
    device: torch.device
    debug: Debugger
    progress: Progress
    checkpoint_dir: Path
    steps_per_epoch: int
    world: World = SINGLE
    blank: torch.Tensor | None = None  # an input of a step's shape, for a rank whose images all failed
    profiling: Profiling | None = None  # started with the epochs, after a resume was accepted
    scalars: tensorboard.Scalars | None = None  # TensorBoard (the leader's; a no-op elsewhere)
    eval_features: object = None  # channel -> its cached evaluation view (frozen backbone), else None
    tally: list = dataclasses.field(default_factory=lambda: [0.0, 0, 0, 0])  # this rank's loss sum, correct,
    # seen and failed since the last sync
    mid_step: bool = False  # inside a step: the weights and the progress may disagree
    hp_dict: dict = dataclasses.field(default_factory=dict)  # what a checkpoint is checked against on resume
    class_folders: list = dataclasses.field(default_factory=list)
    checkpointed_at: float = dataclasses.field(default_factory=time.monotonic)

    def sync(self) -> None:
        """Add every rank's tally to the progress (a collective: all ranks call it at the same step)."""
        loss_sum, correct, seen, failed = distributed.total(self.world, self.tally, self.device)
        p = self.progress
        p.loss_sum, p.correct, p.seen, p.failed = p.loss_sum + loss_sum, p.correct + int(correct), \
            p.seen + int(seen), p.failed + int(failed)
        self.tally = [0.0, 0, 0, 0]

    def save_checkpoint(self) -> None:
        self.checkpointed_at = time.monotonic()
        if not self.world.leader:
            return
        checkpoint.save(self.checkpoint_dir, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "progress": self.progress.to_json(), "hyperparameters": json.dumps(self.hp_dict),
            "class_folders": json.dumps(self.class_folders)})

    def checkpoint_due(self) -> bool:
        minutes = self.hp.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self.checkpointed_at >= minutes * 60

    def resume(self) -> None:
        saved = distributed.from_leader(self.world, lambda: checkpoint.load(self.checkpoint_dir, self.hp_dict,
                                                                          self.class_folders))
        if saved is None:
            return
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # fp16 only: the loss scale it had reached
            self.scaler.load_state_dict(saved["scaler"])
        self.progress = Progress.from_json(saved["progress"])
        if self.progress.epoch >= self.hp.epochs:
            log.info("the checkpoint in %s holds a finished run: evaluating and saving its best model "
                     "(use a new checkpoint directory to train again)", self.checkpoint_dir)
        else:
            log.info("resuming from %s: epoch %d, step %d", self.checkpoint_dir, self.progress.epoch + 1,
                     self.progress.batches_done)


def train_one_epoch(job: Job, steps, stop: StopFlag, started: float) -> bool:
    """Train on STEPS (the rest of the epoch, after a resume); False if SIGTERM stopped it (on any
    host: every rank stops after the same step)."""
    hp, p, epoch, world = job.hp, job.progress, job.progress.epoch, job.world
    models.train_mode(job.net)
    job.debug.train()
    job.profiling.timer.restart()  # after the backbone's pass over the images: not a step's data wait
    for inputs, labels, n_failed in steps:
        job.profiling.timer.data_ready()
        job.mid_step = True  # from the forward (batch-norm statistics) to the step's count
        job.tally[3] += n_failed
        filler = inputs is None and world.distributed  # every rank must take part in the gradient sum
        if filler:
            inputs, labels = job.blank, torch.zeros(1, dtype=torch.long)
            job.net.eval()  # the blank image must not move batch-norm statistics
        if inputs is not None:
            inputs, labels = models.batch_to(inputs, job.device), labels.to(job.device, non_blocking=True)
            with precision.autocast(job.amp, job.device):
                logits = job.step_net(inputs)
                raw = job.criterion(logits, labels)
            mine = 0 if filler else len(labels)
            finite = bool(torch.isfinite(raw))
            bad, images = distributed.total(world, [float(not finite), mine], job.device)  # before any update
            if bad:
                value = raw.item() if not finite else "non-finite on another process"
                raise TrainingError(f"loss became {value} at epoch {epoch + 1} step "
                                    f"{p.batches_done + 1}; lower lr (now {hp.lr:g})")
            # Each rank's mean weighted by its share of the step's images: DDP's average of the
            # gradients is then the gradient of the mean over all of them, shards even or not.
            loss = raw * (world.size * mine / max(images, 1)) if world.distributed else raw
            job.optimizer.zero_grad(set_to_none=True)
            job.scaler.scale(loss).backward()
            job.profiling.timer.backward_done()
            job.scaler.step(job.optimizer)
            job.scaler.update()
            if filler:
                models.train_mode(job.net)
            else:
                job.tally[0] += raw.item() * len(labels)
                job.tally[1] += (logits.argmax(1) == labels).sum().item()
                job.tally[2] += len(labels)
        job.scheduler.step()
        p.batches_done += 1
        job.mid_step = False
        job.profiling.step_done(epoch + 1, p.batches_done)
        if hp.log_interval and p.batches_done % hp.log_interval == 0:
            job.sync()
            if world.leader:
                print(f"epoch {epoch + 1} step {p.batches_done}/{job.steps_per_epoch} "
                      f"loss={p.loss_sum / max(p.seen, 1):.4f} {p.seen / (time.perf_counter() - started):.1f} "
                      "img/s", flush=True)
        # All ranks stop, or checkpoint (checkpoint-minutes), after the same step.
        stop_now, save_now = distributed.anyone(world, [stop.requested, job.checkpoint_due()], job.device)
        if stop_now or save_now:
            job.sync()
            p.seconds = time.perf_counter() - started
        if stop_now:
            return False
        if save_now:
            job.save_checkpoint()
    job.sync()
    return True


def end_epoch(job: Job, valid_batches, started: float) -> None:
    """Validate, print the epoch's metric line, keep the best weights, stop early if it is time."""
    hp, p = job.hp, job.progress
    seconds = time.perf_counter() - started
    train_loss, train_acc = p.loss_sum / max(p.seen, 1), p.correct / max(p.seen, 1)
    ips = p.seen / max(seconds, 1e-9)
    val = evaluate(job.net, valid_batches, job.criterion, job.device, job.debug, job.world)
    if job.world.leader:
        print(metrics.epoch_line(p.epoch + 1, hp.epochs, train_loss, train_acc, val.loss, val.acc, seconds, ips,
                                 job.scheduler.get_last_lr()[0]), flush=True)
        print(f"profile epoch={p.epoch + 1} {job.profiling.timer.summary()}", flush=True)
    improved = val.acc > p.best_acc
    if improved and job.world.leader:  # written before the progress says so: an error here changes nothing
        checkpoint.save_best(job.checkpoint_dir, job.model.state_dict())
    p.failed += val.failed
    p.history.append(dict(epoch=p.epoch + 1, train_loss=train_loss, train_acc=train_acc, valid_loss=val.loss,
                          valid_acc=val.acc, valid_images=val.seen, seconds=seconds, images_per_second=ips))
    if improved:
        p.best_acc, p.best_epoch, p.stale_epochs = val.acc, p.epoch + 1, 0
    else:
        p.stale_epochs += 1
    p.next_epoch()
    job.scalars.epoch(p.history[-1], job.scheduler.get_last_lr()[0])
    if 0 < hp.early_stopping_patience <= p.stale_epochs:
        p.epoch = hp.epochs  # a rerun of a finished job does not train on
        if job.world.leader:
            print(f"early stopping: no better valid accuracy in {hp.early_stopping_patience} epoch(s); "
                  f"best epoch {p.best_epoch}", flush=True)


def data_audit(hp, channels: list, cache, pre, world: World, output_data_dir) -> dict | None:
    """audit.py over the job's channels, before training: the leader logs it and writes audit.tsv.
    Near-duplicates come from the cached features' evaluation view (valid's is the one validation
    uses; train's and test's cost one backbone pass each, kept in the feature cache)."""
    if hp.audit == "off":
        return None
    present = [ch for ch in channels if ch]
    views = None
    if hp.audit == "full" and cache is not None:
        views = [cache.eval_view(ch).features for ch in present]
    if not world.leader:
        return None
    found, rows = audit.run(present, pre.image_size, views)
    listed = ""
    if rows and output_data_dir:  # every finding is a row
        audit.write(Path(output_data_dir) / "audit.tsv", rows)
        listed = f"; the list: {Path(output_data_dir) / 'audit.tsv'}"
    (log.warning if rows else log.info)("%s%s", audit.describe(found), listed)
    return found


def best_model(job: Job, channels: list, share: bool = True) -> dict:
    """Load the best epoch's weights into the model (the leader's, on every rank); its metrics for
    the manifest."""
    best = checkpoint.load_best(job.checkpoint_dir) if job.world.leader else None
    if best is not None:
        job.model.load_state_dict(best)
    if share:
        distributed.same_weights(job.world, job.model)
    p = job.progress
    best_row = next((h for h in p.history if h["epoch"] == p.best_epoch), {})
    return {"best_epoch": p.best_epoch, "epochs_run": len(p.history),
            "valid_loss": best_row.get("valid_loss"), "valid_accuracy": best_row.get("valid_acc"),
            "skipped_files": sum(len(ch.skipped) for ch in channels if ch),
            "undecodable_images": p.failed, "history": p.history}


def run(hp, channels: dict[str, Path], model_dir: Path, checkpoint_dir: Path, output_data_dir: Path | None = None,
        stop: StopFlag | None = None, world: World = SINGLE) -> dict:
    """Channels -> model -> resume -> epochs (train, validate, checkpoint) -> test -> artifact.
    With several processes (`world`, already joined) only the leader writes."""
    stop = stop or StopFlag()
    hp_dict = hyperparameters.as_dict(hp)
    where = folders(hp)
    device = distributed.device_for(world)
    seed_everything(hp.seed)
    if hp.batch_size % world.size:
        raise TrainingError(f"batch-size {hp.batch_size} is the global batch: it must divide evenly over the job's "
                            f"{world.size} processes (GPUs x hosts); use a multiple of {world.size}")

    # Data
    train_ch, valid_ch, test_ch = load_channels(channels, hp)
    all_channels = [train_ch, valid_ch, test_ch]
    same_data(world, all_channels, device)
    if len(train_ch.samples) < world.size:
        raise TrainingError(f"channel 'train' has {len(train_ch.samples)} images: fewer than the job's "
                            f"{world.size} processes")
    classes = train_ch.classes
    log.info("classes: %d; images: train %d, valid %d, test %s", len(classes), len(train_ch.samples),
             len(valid_ch.samples), len(test_ch.samples) if test_ch else "none")

    # Model, and what each step trains on
    model, backbone, weights_source = models.build(hp.backbone, hp.weights, len(classes),
                                                   pretrained_file(channels, hp.backbone))
    n_trainable = models.freeze(model, backbone, hp.trainable)
    models.to_device(model, device)
    amp = precision.resolve(hp.precision, device)
    log.info("%s from %s; training %s (%d parameters) on %s in %s", hp.backbone, weights_source, hp.trainable,
             n_trainable, device, precision.name(amp))
    pre = backbone.preprocessing(hp.image_size)
    cached = hp.cache_features and hp.trainable == "head"
    drop_last = len(train_ch.samples) > hp.batch_size
    steps_per_epoch = len(train_ch.samples) // hp.batch_size if drop_last else 1
    sampler = EpochSampler(len(train_ch.samples), hp.seed, not cached, world, hp.batch_size, drop_last)  # cached
    # views are seeded already
    if cached:
        cache = features.FeatureCache(where.feature_cache, model, backbone.head, pre, amp, device, hp, world)
        batches = FeatureBatches(cache, model, backbone, train_ch, valid_ch, pre, hp, sampler, drop_last, world)
        log.info("frozen backbone: caching its features (%d view(s) per training image%s)", hp.feature_views,
                 f", kept in {where.feature_cache}" if where.feature_cache else "")
    else:
        batches = ImageBatches(model, train_ch, valid_ch, pre, hp, sampler, drop_last, world)
    audited = data_audit(hp, all_channels, cache if cached else None, pre, world, output_data_dir)

    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], hp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        hp.epochs * steps_per_epoch, int(hp.warmup_epochs * steps_per_epoch)))
    debug = Debugger.create(where.debug, hp.debug_interval) if world.leader else Debugger()
    job = Job(hp, model, batches.net, distributed.wrap(batches.net, world, device), criterion, optimizer, scheduler,
              precision.grad_scaler(amp, device), amp, device, debug, Progress(), checkpoint_dir, steps_per_epoch,
              world, batches.blank, hp_dict=hp_dict, class_folders=train_ch.folders)
    job.debug.register(job.net, criterion)
    job.resume()
    job.scalars = tensorboard.Scalars(tensorboard.directory() if world.leader else None)
    # The final evaluation reads the evaluation view the cache holds (valid's from validation,
    # test's from the audit) instead of running the frozen backbone over those images again.
    job.eval_features = cache.eval_view if cached else None

    def save(final: dict) -> None:
        if world.leader:  # model.json keeps the evaluation's headline figures; metrics.json has it all
            headline = {name: {k: v for k, v in found.items() if k in evaluation.HEADLINE}
                        for name, found in final.get("evaluation", {}).items()}
            artifact.save(model_dir, model, hp.backbone, classes, train_ch.folders, pre, hp_dict,
                          {**final, "evaluation": headline} if headline else final, weights_source)

    def stopped(when: str, checkpointed: bool = False) -> Stopped:
        """SIGTERM: checkpoint; SageMaker uploads /opt/ml/model when a stopped job ends (MaxRuntime,
        StopTrainingJob, the tuner's early stopping), so the best epoch so far goes there, untested,
        and its valid line is printed last, as the tuner's objective for a stopped trial."""
        # Each part is tried on its own: a stop has seconds, and the best model must not wait on
        # (or be lost with) a checkpoint that cannot be written.
        saved = checkpointed
        if job.mid_step:  # an error inside a step: its weights may be ahead of its count
            log.warning("stopped inside a step: the checkpoint kept is the last one saved")
        elif not checkpointed:
            saved = _attempt("saving the checkpoint", job.save_checkpoint)
        _attempt("closing Debugger", job.debug.close)
        if job.progress.best_epoch and world.leader:  # no collective here: the ranks may not have agreed to stop
            _attempt("saving the best model so far", save_best_so_far)
        kept = "checkpoint saved in" if saved else "the last checkpoint saved is kept in"
        return Stopped(f"stopped by SIGTERM {when}; {kept} {checkpoint_dir}")

    def save_best_so_far() -> None:
        final = best_model(job, all_channels, share=False)
        save(final)
        print(metrics.selected_line(final["best_epoch"], final["valid_loss"], final["valid_accuracy"]), flush=True)
        log.warning("stopped: the best model so far (epoch %d, valid accuracy %.4f) is saved to %s",
                    final["best_epoch"], final["valid_accuracy"], model_dir)

    # Epochs
    with contextlib.ExitStack() as closers:  # a failed or stopped job keeps its profile too
        job.profiling = Profiling(Path(output_data_dir) / "profile" if output_data_dir and world.leader else None,
                                  device, hp.profile_steps)
        closers.callback(job.profiling.close)
        while job.progress.epoch < hp.epochs:
            epoch = job.progress.epoch
            sampler.set_epoch(epoch, skip=job.progress.batches_done * hp.batch_size)
            started = time.perf_counter() - job.progress.seconds
            try:
                steps = batches.train(epoch, stop)  # with cached features the backbone runs here (first views only)
                if not train_one_epoch(job, steps, stop, started):
                    raise stopped(f"at epoch {epoch + 1} step {job.progress.batches_done}")
                end_epoch(job, batches.valid(), started)
                job.save_checkpoint()
            except features.Interrupted:  # a stop on any rank, during the backbone's pass
                job.progress.seconds = time.perf_counter() - started
                raise stopped(f"at epoch {epoch + 1} step {job.progress.batches_done}") from None
            except Exception as error:  # re-raised below unless a stop is under way
                if isinstance(error, Stopped) or not stop.requested:
                    raise
                # A stop under way can break what it stops first (a loader worker, a peer's
                # connection): that error is the stop, and the work so far is kept.
                log.warning("stopping: %s", described(error))
                job.progress.seconds = time.perf_counter() - started  # the last steps' tally is not synced: lost
                raise stopped(f"at epoch {epoch + 1} step {job.progress.batches_done}") from error
            if distributed.anyone(world, [stop.requested], device)[0]:
                raise stopped(f"after epoch {epoch + 1}", checkpointed=True)

    final = test_and_save(job, all_channels, pre, save)
    final["audit"] = audited
    if world.leader:
        log.info("model saved to %s (best epoch %d, valid accuracy %.4f)", model_dir, job.progress.best_epoch,
                 job.progress.best_acc)
        if output_data_dir is not None:
            shown = test_ch or valid_ch  # the report's gallery: the test channel's mistakes, else valid's
            gallery.write(model, device, pre, shown.root, final["evaluation"][shown.name]["confident_mistakes"],
                          classes, Path(output_data_dir) / "evaluation" / f"{shown.name}_mistakes")
            write_report(Path(output_data_dir), final, [ch for ch in all_channels if ch])
    distributed.barrier(world)  # the others end once the leader has written everything
    return final


def _attempt(what: str, action) -> bool:
    try:
        action()
        return True
    except Exception as e:  # noqa: BLE001 - while stopping, one failure must not cost the rest
        log.error("stopping: %s failed: %s", what, described(e))
        return False


def test_and_save(job: Job, channels: list, pre, save) -> dict:
    """The best epoch's model: its valid line last (the value SageMaker's tuner scores), one pass
    over the test channel, then the artifact."""
    final = best_model(job, channels)
    leader = job.world.leader
    if final["valid_accuracy"] is not None and leader:
        print(metrics.selected_line(final["best_epoch"], final["valid_loss"], final["valid_accuracy"]), flush=True)
    job.debug.predict()  # the test pass is not part of the valid (EVAL) curves
    final["evaluation"] = {}
    for ch in (channels[1], channels[2]):  # valid, then test: every image with the saved model
        if ch is None:
            continue
        found = evaluate_channel(job, ch, pre)
        final["evaluation"][ch.name] = found.summary
        if ch.name == "test":
            final["undecodable_images"] += found.failed
            final.update(test_loss=found.loss, test_accuracy=found.summary["top1_accuracy"],
                         test_images=found.summary["images"])
            if leader:
                print(metrics.test_line(found.loss, found.summary["top1_accuracy"]), flush=True)
        if leader:
            print(metrics.evaluation_line(ch.name, found.summary), flush=True)
        job.scalars.evaluation(ch.name, found.summary, final["best_epoch"])  # a no-op off the leader
    job.scalars.close()
    test_ch = channels[2]
    if leader:
        final["serving"] = serving_checks(job, test_ch or channels[1], pre)
    job.debug.close()
    save(final)
    return final


@torch.no_grad()
def evaluate_channel(job: Job, channel: data.Channel, pre) -> SimpleNamespace:
    """The saved model on every image of a channel (each rank its shard; the logits are gathered):
    loss, and evaluation.summarize's figures. With cached features, the head on the channel's
    evaluation view (every rank has all of its rows)."""
    samples = channel.samples
    if job.eval_features is not None:
        found = job.eval_features(channel)
        job.net.eval()
        logits = job.net(found.features.to(job.device)).float().cpu()
        return _summary(job, channel, logits, found.ok)
    indexed = [(path, i) for i, (path, _) in enumerate(samples)]  # the label slot carries the row
    loader = make_loader(distributed.shard(job.world, indexed), eval_transform(pre), pre.resize_size, job.hp,
                         job.hp.batch_size // job.world.size)
    logits = torch.zeros(len(samples), len(channel.folders))
    seen = torch.zeros(len(samples))
    job.model.eval()
    for inputs, rows, _ in loader:  # an image that fails to decode is left unseen
        if inputs is not None:
            logits[rows] = job.model(models.batch_to(inputs, job.device)).float().cpu()
            seen[rows] = 1
    logits = distributed.gather_rows(job.world, logits, job.device)
    seen = distributed.gather_rows(job.world, seen, job.device)
    return _summary(job, channel, logits, seen > 0)


def _summary(job: Job, channel: data.Channel, logits: torch.Tensor, keep: torch.Tensor) -> SimpleNamespace:
    """keep: the rows evaluated; the others are the images that failed to decode."""
    samples = channel.samples
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)[keep]
    logits = logits[keep]
    loss = job.criterion(logits, labels).item() if len(labels) else 0.0
    files = [os.path.relpath(path, channel.root) for (path, _), k in zip(samples, keep.tolist()) if k]
    summary = evaluation.summarize(torch.softmax(logits, 1).numpy(), labels.numpy(), channel.classes, files)
    return SimpleNamespace(loss=loss, failed=int((~keep).sum()), summary=summary)


def same_data(world: World, channels: list, device) -> None:
    """Every host must see the same files (each trains on its shard of the leader's order): a
    channel that SageMaker shards by S3 key, or a copy that differs, fails every host alike."""
    if not world.distributed:
        return
    h = hashlib.blake2b(digest_size=16)
    for ch in channels:
        for path, label in (ch.samples if ch else []):
            h.update(f"{ch.name}\0{os.path.relpath(path, ch.root)}\0{os.path.getsize(path)}\0{label}\n".encode())
    mine = h.hexdigest()
    leaders = distributed.from_leader(world, lambda: mine)
    if distributed.anyone(world, [mine != leaders], device)[0]:
        raise TrainingError("the hosts do not see the same data (file names, sizes or classes differ between their "
                            "channels); give every host all of it (S3DataDistributionType FullyReplicated)")


def serving_checks(job: Job, channel: data.Channel, pre) -> dict:
    """How the endpoint's reduced precisions agree with fp32 on this channel (model.json keeps it;
    the endpoint's auto precision serves one only where it agrees: serving/precision.py)."""
    # The CPU's modes even where this CPU lacks bf16 (slower, same numbers): the endpoint's may have it.
    targets = {torch.device("cpu"): serving_precision.CPU_MODES}
    if job.device.type == "cuda":
        targets[job.device] = serving_precision.hardware_modes(job.device)
    found = {}
    loader = make_loader(channel.samples, eval_transform(pre), pre.resize_size, job.hp, job.hp.batch_size)
    for device, names in targets.items():
        network = copy.deepcopy(job.model).to(device).eval()
        served = {name: serving_precision.prepare(network, name, device, pre.image_size) for name in names}
        for name, result in serving_precision.check(network, served, loader, device).items():
            found[serving_precision.key(device, name)] = result
            log.info("serving in %s on %s: top-1 agrees with fp32 on %d of %d %s images (%.2f%%), largest probability "
                     "difference %.4f", name, device.type, round(result["top1_agreement"] * result["images"]),
                     result["images"], channel.name, 100 * result["top1_agreement"],
                     result["max_probability_difference"])
    return found


def write_report(directory: Path, final: dict, channels: list[data.Channel]) -> None:
    """metrics.json, the evaluation (evaluation/) and the list of skipped files, uploaded by
    SageMaker as output.tar.gz."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    for name, summary in final.get("evaluation", {}).items():
        evaluation.write(directory / "evaluation", name, summary)
    skipped = ["\t".join(map(_tsv_cell, (ch.name, path, reason))) for ch in channels for path, reason in ch.skipped]
    if skipped:
        (directory / "skipped_files.tsv").write_text("channel\tpath\treason\n" + "\n".join(skipped) + "\n")
        log.warning("skipped %d file(s) that are not images it can read; list and reasons in %s", len(skipped),
                    directory / "skipped_files.tsv")


def _tsv_cell(text: str) -> str:
    # A file name may hold a tab or a newline: escaped, each file stays one row.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
