"""An epoch: its training steps (train_one_epoch, each step `step`), then validation, the metric
line and the best weights (end_epoch). With several processes every rank takes the same steps and
the sums are added up; only the leader prints."""
from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from torch import nn

from .. import metrics, models, precision
from ..errors import TrainingError
from . import checkpoint, distributed
from .debugger import Debugger
from .distributed import SINGLE, World
from .state import RunState, kept_figures
from .stopping import StopFlag


def train_one_epoch(run: RunState, steps, stop: StopFlag, started: float) -> bool:
    """Train on STEPS (the rest of the epoch, after a resume); False if SIGTERM stopped it (on any
    host: every rank stops after the same step)."""
    hp, p = run.hp, run.progress
    models.train_mode(run.net)
    run.debug.train()
    run.profiling.timer.restart()  # after the backbone's pass over the images: not a step's data wait
    for inputs, labels, n_failed in steps:
        run.profiling.timer.data_ready()
        run.mid_step = True  # from the forward (batch-norm statistics) to the step's count
        step(run, inputs, labels, n_failed)
        run.scheduler.step()
        p.batches_done += 1
        run.mid_step = False
        run.profiling.step_done(p.epoch + 1, p.batches_done)
        if hp.log_interval and p.batches_done % hp.log_interval == 0:
            run.sync()
            if run.world.leader:
                print(f"epoch {p.epoch + 1} step {p.batches_done}/{run.steps_per_epoch} "
                      f"loss={p.loss_sum / max(p.seen, 1):.4f} {p.seen / (time.perf_counter() - started):.1f} "
                      "img/s", flush=True)
        # All ranks stop, or checkpoint (checkpoint-minutes), after the same step.
        stop_now, save_now = distributed.anyone(run.world, [stop.requested, run.checkpoint_due()], run.device)
        if stop_now or save_now:
            run.sync()
            p.seconds = time.perf_counter() - started
        if stop_now:
            return False
        if save_now:
            run.save_checkpoint()
    run.sync()
    return True


def step(run: RunState, inputs, labels, n_failed: int) -> None:
    """One optimizer step on this rank's share of the global batch. A rank whose images all failed
    to decode steps on a blank input (every rank must take part in the gradient sum)."""
    world, p = run.world, run.progress
    run.tally[3] += n_failed
    filler = inputs is None and world.distributed
    if filler:
        inputs, labels = run.blank, torch.zeros(1, dtype=torch.long)
        run.net.eval()  # the blank image must not move batch-norm statistics
    if inputs is None:
        return
    inputs, labels = models.batch_to(inputs, run.device), labels.to(run.device, non_blocking=True)
    targets = labels
    if run.mixing is not None and not filler:  # class probabilities; accuracy counts the larger share
        inputs, targets = run.mixing(inputs, labels)
        labels = targets.argmax(1)
    with precision.autocast(run.amp, run.device):
        logits = run.step_net(inputs)
        raw = run.criterion(logits, targets)
    mine = 0 if filler else len(labels)
    finite = bool(torch.isfinite(raw))
    bad, images = distributed.total(world, [float(not finite), mine], run.device)  # before any update
    if bad:
        value = raw.item() if not finite else "non-finite on another process"
        raise TrainingError(f"loss became {value} at epoch {p.epoch + 1} step {p.batches_done + 1}; lower lr "
                            f"(now {run.hp.lr:g})")
    # Each rank's mean weighted by its share of the step's images: DDP's average of the gradients
    # is then the gradient of the mean over all of them, shards even or not.
    loss = raw * (world.size * mine / max(images, 1)) if world.distributed else raw
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.profiling.timer.backward_done()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:  # every rank, the filler's too: their weights moved alike
        run.ema.update(run.net, p.epoch * run.steps_per_epoch + p.batches_done + 1)
    if filler:
        models.train_mode(run.net)
        return
    run.tally[0] += raw.item() * len(labels)
    run.tally[1] += (logits.argmax(1) == labels).sum().item()
    run.tally[2] += len(labels)


def end_epoch(run: RunState, valid_batches, started: float) -> None:
    """Validate, print the epoch's metric line, keep the best weights, stop early if it is time."""
    hp, p = run.hp, run.progress
    seconds = time.perf_counter() - started
    train_loss, train_acc = p.loss_sum / max(p.seen, 1), p.correct / max(p.seen, 1)
    ips = p.seen / max(seconds, 1e-9)
    # The averaged weights (ema-decay) are validated on the same batches, with a loss Debugger does not record.
    nets = [(run.net, run.criterion)] + ([(run.ema.net, nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing))]
                                         if run.ema is not None else [])
    val, *averaged = evaluate(nets, valid_batches, run.device, run.debug, run.world)
    row = dict(epoch=p.epoch + 1, train_loss=train_loss, train_acc=train_acc, valid_loss=val.loss, valid_acc=val.acc,
               valid_images=val.seen, seconds=seconds, images_per_second=ips)
    if averaged:
        row.update(ema_valid_loss=averaged[0].loss, ema_valid_acc=averaged[0].acc,
                   kept="ema" if averaged[0].acc > val.acc else "model")
    kept_acc = kept_figures(row)["valid_acc"]
    if run.world.leader:
        print(metrics.epoch_line(p.epoch + 1, hp.epochs, train_loss, train_acc, val.loss, val.acc, seconds, ips,
                                 run.scheduler.get_last_lr()[0], *((averaged[0].loss, averaged[0].acc) if averaged
                                                                   else ())), flush=True)
        print(f"profile epoch={p.epoch + 1} {run.profiling.timer.summary()}", flush=True)
    improved = kept_acc > p.best_acc
    if improved and run.world.leader:  # written before the progress says so: an error here changes nothing
        checkpoint.save_best(run.checkpoint_dir, run.ema.model_state(run.model) if row.get("kept") == "ema"
                             else run.model.state_dict())
    p.failed += val.failed
    p.history.append(row)
    if improved:
        p.best_acc, p.best_epoch, p.stale_epochs = kept_acc, p.epoch + 1, 0
    else:
        p.stale_epochs += 1
    p.next_epoch()
    run.scalars.epoch(p.history[-1], run.scheduler.get_last_lr()[0])
    if 0 < hp.early_stopping_patience <= p.stale_epochs:
        p.epoch = hp.epochs  # a rerun of a finished job does not train on
        if run.world.leader:
            print(f"early stopping: no better valid accuracy in {hp.early_stopping_patience} epoch(s); "
                  f"best epoch {p.best_epoch}", flush=True)


@torch.no_grad()
def evaluate(nets: list[tuple[nn.Module, nn.Module]], loader, device, debug: Debugger | None = None,
             world: World = SINGLE) -> list[SimpleNamespace]:
    """Loss and accuracy over the loader of each (network, criterion), all on the same batches;
    with several processes each passes its shard and the sums are added up, so every image counts
    once."""
    for net, _ in nets:
        net.eval()
    if debug:
        debug.eval()
    sums = [[0.0, 0] for _ in nets]  # loss sum, correct
    seen, failed = 0, 0
    for inputs, labels, n_failed in loader:  # images, or cached features
        failed += n_failed
        if inputs is None:
            continue
        inputs, labels = models.batch_to(inputs, device), labels.to(device, non_blocking=True)
        for (net, criterion), total in zip(nets, sums):
            logits = net(inputs)
            total[0] += criterion(logits, labels).item() * len(labels)
            total[1] += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    summed = distributed.total(world, [v for total in sums for v in total] + [seen, failed], device)
    seen, failed = int(summed[-2]), int(summed[-1])
    return [SimpleNamespace(loss=summed[2 * i] / max(seen, 1), acc=int(summed[2 * i + 1]) / max(seen, 1), seen=seen,
                            failed=failed) for i in range(len(nets))]
