"""Fine-tune an ImageNet CNN on ImageFolder channels. Reads top to bottom:
channels -> data loaders -> model -> resume -> epochs (train, validate, checkpoint) -> test -> artifact.
With trainable=head (and cache-features), epochs train the head on cached backbone features
(features.py) instead of images: the same steps, the same shuffle, a fraction of the time.

`run` is called by the image's `train` program (image_classifier.job) with what
sagemaker-training parsed; nothing here knows about SageMaker's files.
"""
from __future__ import annotations

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

from . import artifact, checkpoint, data, features, hyperparameters, metrics, models, paths, precision
from .debugger import Debugger
from .profiling import Profiling
from .errors import TrainingError
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

    With seeded=True it yields (index, seed) keys for data.ImageDataset: each image's random
    augmentation is then fixed by (seed, epoch, index) too, so the rest of a resumed epoch is
    augmented as the uninterrupted run would have done it, in whichever worker."""

    def __init__(self, n: int, seed: int, seeded: bool = False):
        self.n, self.seed, self.seeded, self.epoch, self.skip = n, seed, seeded, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.skip:].tolist()
        if self.seeded:
            base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
            return iter([(i, (base + i) % 2**62) for i in order])
        return iter(order)

    def __len__(self) -> int:
        return self.n - self.skip


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


def make_loader(samples, transform, draft_size, hp, sampler=None, drop_last=False):
    return data.loader(data.ImageDataset(samples, transform, draft_size), hp.batch_size, hp.num_workers, sampler,
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
def evaluate(model: nn.Module, loader, criterion, device, debug: Debugger | None = None) -> SimpleNamespace:
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


def run(hp, channels: dict[str, Path], model_dir: Path, checkpoint_dir: Path, output_data_dir: Path | None = None,
        stop: StopFlag | None = None) -> dict:
    stop = stop or StopFlag()
    hp_dict = hyperparameters.as_dict(hp)
    where = folders(hp)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seed_everything(hp.seed)

    # Data
    train_ch, valid_ch, test_ch = load_channels(channels, hp)
    classes = train_ch.classes
    log.info("classes: %d; images: train %d, valid %d, test %s", len(classes), len(train_ch.samples),
             len(valid_ch.samples), len(test_ch.samples) if test_ch else "none")

    # Model
    model, backbone, weights_source = models.build(hp.backbone, hp.weights, len(classes),
                                                   pretrained_file(channels, hp.backbone))
    n_trainable = models.freeze(model, backbone, hp.trainable)
    models.to_device(model, device)
    amp = precision.resolve(hp.precision, device)
    log.info("%s from %s; training %s (%d parameters) on %s in %s", hp.backbone, weights_source, hp.trainable,
             n_trainable, device, precision.name(amp))
    pre = backbone.preprocessing(hp.image_size)
    cached = hp.cache_features and hp.trainable == "head"
    sampler = EpochSampler(len(train_ch.samples), hp.seed, seeded=not cached)  # cached views are seeded already
    drop_last = len(train_ch.samples) > hp.batch_size
    steps_per_epoch = len(train_ch.samples) // hp.batch_size if drop_last else 1
    cache = None
    if cached:
        cache = features.FeatureCache(where.feature_cache, model, backbone.head, pre, amp, device, hp)
        net = features.Head(model, backbone.head)  # what each step runs: the head on cached features
        log.info("frozen backbone: caching its features (%d view(s) per training image%s)", hp.feature_views,
                 f", kept in {where.feature_cache}" if where.feature_cache else "")
    else:
        net = model
        train_loader = make_loader(train_ch.samples, train_transform(pre), pre.image_size, hp, sampler, drop_last)
        valid_loader = make_loader(valid_ch.samples, eval_transform(pre), pre.resize_size, hp)

    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    debug = Debugger.create(where.debug, hp.debug_interval)
    debug.register(net, criterion)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], hp)
    scaler = precision.grad_scaler(amp, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        hp.epochs * steps_per_epoch, int(hp.warmup_epochs * steps_per_epoch)))

    # Resume
    progress = dict(epoch=0, batches_done=0, loss_sum=0.0, correct=0, seen=0, seconds=0.0, failed=0,
                    best_acc=-1.0, best_epoch=0, stale_epochs=0, history=[])
    saved = checkpoint.load(checkpoint_dir, hp_dict, train_ch.folders)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # fp16 only: the loss scale it had reached
            scaler.load_state_dict(saved["scaler"])
        progress.update(json.loads(saved["progress"]))
        if progress["epoch"] >= hp.epochs:
            log.info("the checkpoint in %s holds a finished run: evaluating and saving its best model "
                     "(use a new checkpoint directory to train again)", checkpoint_dir)
        else:
            log.info("resuming from %s: epoch %d, step %d", checkpoint_dir, progress["epoch"] + 1,
                     progress["batches_done"])

    def save_checkpoint():
        checkpoint.save(checkpoint_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "progress": json.dumps(progress),
            "hyperparameters": json.dumps(hp_dict), "class_folders": json.dumps(train_ch.folders)})

    def best_model() -> dict:
        """Load the best epoch's weights into the model; its metrics for the manifest."""
        best = checkpoint.load_best(checkpoint_dir)
        if best is not None:
            model.load_state_dict(best)
        history = progress["history"]
        best_row = next((h for h in history if h["epoch"] == progress["best_epoch"]), {})
        return {"best_epoch": progress["best_epoch"], "epochs_run": len(history),
                "valid_loss": best_row.get("valid_loss"), "valid_accuracy": best_row.get("valid_acc"),
                "skipped_files": sum(len(ch.skipped) for ch in (train_ch, valid_ch, test_ch) if ch),
                "undecodable_images": progress["failed"], "history": history}

    def save_on_stop() -> None:
        """SageMaker uploads /opt/ml/model when a stopped job ends (MaxRuntime, StopTrainingJob, the
        tuner's early stopping): the best epoch so far goes there, not tested (no time for it)."""
        if progress["best_epoch"]:
            final = best_model()
            artifact.save(model_dir, model, hp.backbone, classes, train_ch.folders, pre, hp_dict, final, weights_source)
            log.warning("stopped: the best model so far (epoch %d, valid accuracy %.4f) is saved to %s",
                        final["best_epoch"], final["valid_accuracy"], model_dir)

    def stopped_by_sigterm(epoch: int, started: float) -> Stopped:
        progress["seconds"] = time.perf_counter() - started
        save_checkpoint()
        debug.close()
        save_on_stop()
        return Stopped(f"stopped by SIGTERM at epoch {epoch + 1} step {progress['batches_done']}; "
                       f"checkpoint saved in {checkpoint_dir}")

    # Epochs
    early_stopped = False
    profiling = Profiling(Path(output_data_dir) / "profile" if output_data_dir else None, device, hp.profile_steps)
    try:  # a failed or stopped job keeps its profile too
        while progress["epoch"] < hp.epochs:
            epoch = progress["epoch"]
            sampler.set_epoch(epoch, skip=progress["batches_done"] * hp.batch_size)
            started = time.perf_counter() - progress["seconds"]
            if cache:
                try:  # the backbone runs here, in the first feature-views epochs only
                    view = cache.train_view(train_ch, epoch % hp.feature_views, train_transform(pre), stop)
                except features.Interrupted:
                    raise stopped_by_sigterm(epoch, started) from None
                steps = features.batches(view, list(sampler), hp.batch_size, drop_last)
            else:
                steps = train_loader
            models.train_mode(net)
            debug.train()
            profiling.timer.restart()  # after the backbone's pass over the images: not a step's data wait
            for inputs, labels, n_failed in steps:
                profiling.timer.data_ready()
                progress["failed"] += n_failed
                if inputs is not None:
                    inputs, labels = models.batch_to(inputs, device), labels.to(device, non_blocking=True)
                    with precision.autocast(amp, device):
                        logits = net(inputs)
                        loss = criterion(logits, labels)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1} step "
                                            f"{progress['batches_done'] + 1}; lower lr (now {hp.lr:g})")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    profiling.timer.backward_done()
                    scaler.step(optimizer)
                    scaler.update()
                    progress["loss_sum"] += loss.item() * len(labels)
                    progress["correct"] += (logits.argmax(1) == labels).sum().item()
                    progress["seen"] += len(labels)
                scheduler.step()
                progress["batches_done"] += 1
                profiling.step_done(epoch + 1, progress["batches_done"])
                if hp.log_interval and progress["batches_done"] % hp.log_interval == 0:
                    elapsed = time.perf_counter() - started
                    print(f"epoch {epoch + 1} step {progress['batches_done']}/{steps_per_epoch} "
                          f"loss={progress['loss_sum'] / max(progress['seen'], 1):.4f} "
                          f"{progress['seen'] / elapsed:.1f} img/s", flush=True)
                if stop.requested:
                    raise stopped_by_sigterm(epoch, started)
            seconds = time.perf_counter() - started
            train_loss = progress["loss_sum"] / max(progress["seen"], 1)
            train_acc = progress["correct"] / max(progress["seen"], 1)
            ips = progress["seen"] / max(seconds, 1e-9)
            if cache:
                valid_loader = features.batches(cache.eval_view(valid_ch, eval_transform(pre)),
                                                list(range(len(valid_ch.samples))), hp.batch_size, False)
            val = evaluate(net, valid_loader, criterion, device, debug)
            progress["failed"] += val.failed
            print(metrics.epoch_line(epoch + 1, hp.epochs, train_loss, train_acc, val.loss, val.acc, seconds, ips,
                                     scheduler.get_last_lr()[0]), flush=True)
            print(f"profile epoch={epoch + 1} {profiling.timer.summary()}", flush=True)
            progress["history"].append(dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc,
                                            valid_loss=val.loss, valid_acc=val.acc, seconds=seconds,
                                            images_per_second=ips))
            if val.acc > progress["best_acc"]:
                progress.update(best_acc=val.acc, best_epoch=epoch + 1, stale_epochs=0)
                checkpoint.save_best(checkpoint_dir, model.state_dict())
            else:
                progress["stale_epochs"] += 1
            progress.update(epoch=epoch + 1, batches_done=0, loss_sum=0.0, correct=0, seen=0, seconds=0.0)
            early_stopped = 0 < hp.early_stopping_patience <= progress["stale_epochs"]
            if early_stopped:
                progress["epoch"] = hp.epochs  # a rerun of a finished job does not train on
            save_checkpoint()
            if early_stopped:
                print(f"early stopping: no better valid accuracy in {hp.early_stopping_patience} epoch(s); "
                      f"best epoch {progress['best_epoch']}", flush=True)
            if stop.requested:
                debug.close()
                save_on_stop()
                raise Stopped(f"stopped by SIGTERM after epoch {epoch + 1}; checkpoint saved in {checkpoint_dir}")
    finally:
        profiling.close()

    # Test, once, on the best model (selected by valid accuracy only)
    final = best_model()
    if final["valid_accuracy"] is not None:
        print(metrics.selected_line(final["best_epoch"], final["valid_loss"], final["valid_accuracy"]), flush=True)
    debug.predict()  # the test pass is not part of the valid (EVAL) curves
    if test_ch is not None:
        test = evaluate(model, make_loader(test_ch.samples, eval_transform(pre), pre.resize_size, hp),
                        criterion, device)
        final.update(test_loss=test.loss, test_accuracy=test.acc, test_images=test.seen)
        final["undecodable_images"] += test.failed
        print(metrics.test_line(test.loss, test.acc), flush=True)

    debug.close()
    artifact.save(model_dir, model, hp.backbone, classes, train_ch.folders, pre, hp_dict, final, weights_source)
    log.info("model saved to %s (best epoch %d, valid accuracy %.4f)", model_dir, progress["best_epoch"],
             progress["best_acc"])
    if output_data_dir is not None:
        write_report(Path(output_data_dir), final, [train_ch, valid_ch] + ([test_ch] if test_ch else []))
    return final


def write_report(directory: Path, final: dict, channels: list[data.Channel]) -> None:
    """metrics.json and the list of skipped files, uploaded by SageMaker as output.tar.gz."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
    skipped = ["\t".join(map(_tsv_cell, (ch.name, path, reason))) for ch in channels for path, reason in ch.skipped]
    if skipped:
        (directory / "skipped_files.tsv").write_text("channel\tpath\treason\n" + "\n".join(skipped) + "\n")
        log.warning("skipped %d file(s) that are not images it can read; list and reasons in %s", len(skipped),
                    directory / "skipped_files.tsv")


def _tsv_cell(text: str) -> str:
    # A file name may hold a tab or a newline: escaped, each file stays one row.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
