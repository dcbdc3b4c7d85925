"""Fine-tune an ImageNet CNN on ImageFolder channels. `run` reads top to bottom: setup (channels,
model, what each step trains on, optimizer, resume) -> epochs (epochs.py: train_one_epoch, then
end_epoch validates and checkpoints) -> finish (finish.py: the best model tested, the artifact,
the report). A stop (SIGTERM) checkpoints and keeps the best model so far (`stopped`).

With several processes (GPUs, hosts: distributed.py) each trains on its shard of every global
batch under DistributedDataParallel, validation and test are sharded and summed, and only the
leader prints metric lines and writes files.

`run` is called by the image's `train` program (job.py) with the parsed hyperparameters and the
folders environment.py resolved; nothing here reads SageMaker's files or the environment.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import artifact, hyperparameters, metrics, models, precision
from ..errors import TrainingError, described
from ..hyperparameters import Hyperparameters
from ..image_folder import Channel
from ..preprocessing import Augmentation, Preprocessing
from . import audit, channels as channel_files, distributed, ema, features, finish, gallery, mixing, tensorboard
from .batches import FeatureBatches, ImageBatches
from .debugger import Debugger
from .distributed import SINGLE, World
from .environment import Locations
from .epochs import end_epoch, train_one_epoch
from .finish import Result
from .profiling import Profiling
from .sampler import EpochSampler
from .state import RunState
from .stopping import StopFlag, Stopped, attempt

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """What setup found, beside the run's state: the data, the preprocessing, the model's origin."""
    train: Channel
    valid: Channel
    test: Channel | None
    pre: Preprocessing
    weights_source: str  # where the backbone's weights came from, in words
    architecture: dict  # what serving builds (models.Backbone.architecture)
    sampler: EpochSampler
    batches: ImageBatches | FeatureBatches
    audit: dict | None  # the data audit's summary

    @property
    def channels(self) -> list:
        return [self.train, self.valid, self.test]


def run(hp: Hyperparameters, channels: dict[str, Path], where: Locations, stop: StopFlag | None = None,
        world: World = SINGLE) -> Result:
    """Channels -> model -> resume -> epochs (train, validate, checkpoint) -> test -> artifact.
    With several processes (`world`, already joined) only the leader writes."""
    stop = stop or StopFlag()
    state, setup = prepare(hp, channels, where, world)
    with contextlib.ExitStack() as closers:  # a failed or stopped job keeps its profile too
        state.profiling = Profiling(where.output_data / "profile" if world.leader else None, state.device,
                                    hp.profile_steps)
        closers.callback(state.profiling.close)
        while state.progress.epoch < hp.epochs:
            epoch = state.progress.epoch
            setup.sampler.set_epoch(epoch, skip=state.progress.batches_done * hp.batch_size)
            started = time.perf_counter() - state.progress.seconds
            try:
                steps = setup.batches.train(epoch, stop)  # with cached features the backbone runs here (first views)
                if not train_one_epoch(state, steps, stop, started):
                    raise stopped(state, setup, where)
                end_epoch(state, setup.batches.valid(), started)
                state.save_checkpoint()
            except features.Interrupted:  # a stop on any rank, during the backbone's pass
                state.progress.seconds = time.perf_counter() - started
                raise stopped(state, setup, where) from None
            except Exception as error:  # re-raised below unless a stop is under way
                if isinstance(error, Stopped) or not stop.requested:
                    raise
                # A stop under way can break what it stops first (a loader worker, a peer's
                # connection): that error is the stop, and the work so far is kept.
                log.warning("stopping: %s", described(error))
                state.progress.seconds = time.perf_counter() - started  # the last steps' tally is not synced: lost
                raise stopped(state, setup, where) from error
            if distributed.anyone(world, [stop.requested], state.device)[0]:
                raise stopped(state, setup, where, checkpointed=True)
    return complete(state, setup, where)


# --- setup ----------------------------------------------------------------------------------------
def prepare(hp: Hyperparameters, channels: dict[str, Path], where: Locations, world: World) -> tuple[RunState, Setup]:
    """The data, the model and what each step trains on, the optimizer; resumed from the checkpoint
    if there is one."""
    device = distributed.device_for(world)
    seed_everything(hp.seed)
    if hp.batch_size % world.size:
        raise TrainingError(f"batch-size {hp.batch_size} is the global batch: it must divide evenly over the job's "
                            f"{world.size} processes (GPUs x hosts); use a multiple of {world.size}")
    train_ch, valid_ch, test_ch = channel_files.load(channels, hp.valid_fraction, hp.seed)
    channel_files.check_shared(world, [train_ch, valid_ch, test_ch], device)
    cached = hp.cache_features and hp.trainable == "head"
    mix = mixing.create(mixing.alphas(hp.mixup, hp.cutmix, len(train_ch.samples), cached), len(train_ch.classes))
    model, backbone, weights_source = models.build(hp.backbone, hp.weights, len(train_ch.classes),
                                                   channel_files.pretrained(channels, hp.backbone), hp.image_size)
    n_trainable = models.freeze(model, backbone, hp.trainable)
    models.to_device(model, device)
    amp = precision.resolve(hp.precision, device)
    log.info("%s from %s; training %s (%d parameters) on %s in %s", hp.backbone, weights_source, hp.trainable,
             n_trainable, device, precision.name(amp))
    pre = backbone.preprocessing()
    drop_last = len(train_ch.samples) > hp.batch_size
    cache = None
    if cached:
        cache = features.FeatureCache(where.feature_cache, model, backbone.head, pre, amp, device, seed=hp.seed,
                                      batch_size=hp.batch_size, num_workers=hp.num_workers, world=world)
        log.info("frozen backbone: caching its features (%d view(s) per training image%s)", hp.feature_views,
                 f", kept in {where.feature_cache}" if where.feature_cache else "")
    # cached views are seeded already
    sampler = EpochSampler(len(train_ch.samples), hp.seed, cache is None, world, hp.batch_size, drop_last)
    common = dict(model=model, train=train_ch, valid=valid_ch, pre=pre, batch_size=hp.batch_size, sampler=sampler,
                  drop_last=drop_last, world=world, aug=Augmentation(hp.augment, hp.random_erasing))
    batches = (FeatureBatches(cache=cache, head=backbone.head, views=hp.feature_views, **common) if cache else
               ImageBatches(num_workers=hp.num_workers, **common))
    setup = Setup(train=train_ch, valid=valid_ch, test=test_ch, pre=pre, weights_source=weights_source,
                  architecture=backbone.architecture,
                  sampler=sampler, batches=batches,
                  audit=data_audit(hp.audit, [train_ch, valid_ch, test_ch], cache, pre, world, where.output_data))
    state = run_state(hp, model, batches, amp, device, world, where,
                      train_ch.folders, len(train_ch.samples) // hp.batch_size if drop_last else 1, mix,
                      pre.image_size)
    # The final evaluation reads the evaluation view the cache holds (valid's from validation,
    # test's from the audit) instead of running the frozen backbone over those images again.
    state.eval_features = cache.eval_view if cache else None
    return state, setup


def run_state(hp: Hyperparameters, model: nn.Module, batches, amp, device: torch.device, world: World,
              where: Locations, class_folders: list[str], steps_per_epoch: int,
              mix: mixing.Mixing | None = None, image_size: int = 0) -> RunState:
    """The loss, the optimizer and its schedule, the weights' average, Debugger's hook and
    TensorBoard; the progress from the checkpoint, if one is there."""
    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    trained = models.param_groups(model, hp.weight_decay, hp.layer_decay if hp.trainable != "head" else 1.0)
    optimizer = build_optimizer(trained, hp.optimizer, hp.lr, hp.momentum, hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        hp.epochs * steps_per_epoch, int(hp.warmup_epochs * steps_per_epoch)))
    debug = Debugger.create(where.debug, hp.debug_interval) if world.leader else Debugger()
    state = RunState(hp=hp, model=model, net=batches.net, step_net=distributed.wrap(batches.net, world, device),
                     criterion=criterion, optimizer=optimizer, scheduler=scheduler,
                     scaler=precision.grad_scaler(amp, device), amp=amp, device=device, debug=debug,
                     checkpoint_dir=where.checkpoints, class_folders=class_folders, steps_per_epoch=steps_per_epoch,
                     world=world, blank=batches.blank, mixing=mix, image_size=image_size,
                     ema=ema.create(batches.net, hp.ema_decay))  # copied before Debugger hooks the net
    debug.register(state.net, criterion)
    state.resume()
    state.scalars = tensorboard.Scalars(where.tensorboard if world.leader else None)
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """params: tensors, or groups that carry their own `lr_scale` and weight decay (layer-decay)."""
    params = [{**group, "lr": lr * group.get("lr_scale", 1.0)} if isinstance(group, dict) else group
              for group in params]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def data_audit(level: str, channels: list, cache, pre: Preprocessing, world: World, output_data: Path) -> dict | None:
    """audit.py over the job's channels, before training: the leader logs it and writes audit.tsv.
    Near-duplicates come from the cached features' evaluation view (valid's is the one validation
    uses; train's and test's cost one backbone pass each, kept in the feature cache)."""
    if level == "off":
        return None
    present = [ch for ch in channels if ch]
    views = [cache.eval_view(ch).features for ch in present] if level == "full" and cache is not None else None
    if not world.leader:
        return None
    found, rows = audit.run(present, pre.image_size, views)
    listed = ""
    if rows:  # every finding is a row
        audit.write(output_data / "audit.tsv", rows)
        listed = f"; the list: {output_data / 'audit.tsv'}"
    (log.warning if rows else log.info)("%s%s", audit.describe(found), listed)
    return found


# --- the end ----------------------------------------------------------------------------------------
def complete(state: RunState, setup: Setup, where: Locations) -> Result:
    """The best epoch's model tested, measured for serving, saved with its report."""
    finish.load_best(state)
    tested = finish.test(state, setup.channels, setup.pre)
    serving = None
    if state.world.leader:
        serving = finish.serving_checks(state.model, state.device, setup.test or setup.valid, setup.pre,
                                        state.hp.batch_size, state.hp.num_workers)
    state.debug.close()
    result = finish.result(state, setup.channels, tested, serving=serving, audit=setup.audit)
    if state.world.leader:
        save_artifact(state, setup, where, result)
        log.info("model saved to %s (best epoch %d, valid accuracy %.4f)", where.model, result.best_epoch,
                 state.progress.best_acc)
        shown = setup.test or setup.valid  # the report's gallery: the test channel's mistakes, else valid's
        figures = result.evaluation[shown.name]
        mistakes = gallery.write(state.model, state.device, setup.pre, shown.root, figures["confident_mistakes"],
                                 setup.train.classes, where.output_data / "evaluation" / f"{shown.name}_mistakes")
        found = result.metrics()
        found["evaluation"] = {**result.evaluation, shown.name: {**figures, "confident_mistakes": mistakes}}
        finish.write_report(where.output_data, found, [ch for ch in setup.channels if ch])
    distributed.barrier(state.world)  # the others end once the leader has written everything
    return result


def save_artifact(state: RunState, setup: Setup, where: Locations, result: Result) -> None:
    artifact.save(where.model, state.model, state.hp.backbone, setup.architecture, setup.train.classes,
                  setup.train.folders, setup.pre, hyperparameters.as_dict(state.hp), result.manifest(),
                  setup.weights_source)


def stopped(state: RunState, setup: Setup, where: Locations, checkpointed: bool = False) -> Stopped:
    """SIGTERM: checkpoint; SageMaker uploads /opt/ml/model when a stopped job ends (MaxRuntime,
    StopTrainingJob, the tuner's early stopping), so the best epoch so far goes there, untested,
    and its valid line is printed last, as the tuner's objective for a stopped trial. Each part is
    tried on its own (stopping.attempt)."""
    saved = checkpointed
    if state.mid_step:  # an error inside a step: its weights may be ahead of its count
        log.warning("stopped inside a step: the checkpoint kept is the last one saved")
    elif not checkpointed:
        saved = attempt("saving the checkpoint", state.save_checkpoint)
    attempt("closing Debugger", state.debug.close)
    if state.progress.best_epoch and state.world.leader:  # no collective: the ranks may not have agreed to stop
        attempt("saving the best model so far", lambda: save_best_so_far(state, setup, where))
    p = state.progress  # checkpointed: at the end of an epoch, the last row of the history
    when = f"after epoch {p.history[-1]['epoch']}" if checkpointed else f"at epoch {p.epoch + 1} step {p.batches_done}"
    kept = "checkpoint saved in" if saved else "the last checkpoint saved is kept in"
    return Stopped(f"stopped by SIGTERM {when}; {kept} {state.checkpoint_dir}")


def save_best_so_far(state: RunState, setup: Setup, where: Locations) -> None:
    finish.load_best(state, share=False)
    result = finish.result(state, setup.channels)
    save_artifact(state, setup, where, result)
    print(metrics.selected_line(result.best_epoch, result.valid_loss, result.valid_accuracy), flush=True)
    log.warning("stopped: the best model so far (epoch %d, valid accuracy %.4f) is saved to %s", result.best_epoch,
                result.valid_accuracy, where.model)
