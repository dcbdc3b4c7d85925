"""The run's state: what the steps of a run share (RunState, built with keywords once the model and
its batches are ready), and where training stands (Progress, the checkpoint's format)."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from .. import hyperparameters
from ..hyperparameters import Hyperparameters
from . import checkpoint, distributed, tensorboard
from .debugger import Debugger
from .distributed import SINGLE, World
from .ema import WeightAverage
from .mixing import Mixing
from .profiling import Profiling

log = logging.getLogger(__name__)


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

    def best_row(self) -> dict:
        """The best epoch's row, its valid figures those of the weights kept (the average, with ema-decay,
        where it scored better)."""
        return kept_figures(next((h for h in self.history if h["epoch"] == self.best_epoch), {}))


def kept_figures(row: dict) -> dict:
    """An epoch's history row with the valid figures of the weights it kept: the average's where
    it scored better (row["kept"] == "ema"), else the trained weights' own."""
    if row.get("kept") == "ema":
        return {**row, "valid_loss": row["ema_valid_loss"], "valid_acc": row["ema_valid_acc"]}
    return row


@dataclasses.dataclass(kw_only=True)
class RunState:
    """What the steps of a run share."""
    hp: Hyperparameters
    model: nn.Module  # the whole network: checkpointed and saved
    net: nn.Module  # what a step runs: the model, or its head on cached features (evaluation runs it)
    step_net: nn.Module  # net, in DistributedDataParallel with several processes
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None  # the training autocast dtype; None: fp32
    device: torch.device
    debug: Debugger
    checkpoint_dir: Path
    class_folders: list
    steps_per_epoch: int
    ema: WeightAverage | None = None  # ema-decay: the average of the trained weights
    mixing: Mixing | None = None  # mixup/cutmix of each training batch
    image_size: int = 0  # the crop the run trains at (image-size 0: the backbone's own), what a checkpoint records
    world: World = SINGLE
    blank: torch.Tensor | None = None  # an input of a step's shape, for a rank whose images all failed
    progress: Progress = dataclasses.field(default_factory=Progress)
    profiling: Profiling | None = None  # started with the epochs, after a resume was accepted
    scalars: tensorboard.Scalars | None = None  # TensorBoard (the leader's; a no-op elsewhere)
    eval_features: object = None  # channel -> its cached evaluation view (frozen backbone), else None
    tally: list = dataclasses.field(default_factory=lambda: [0.0, 0, 0, 0])  # this rank's loss sum, correct,
    # seen and failed since the last sync
    mid_step: bool = False  # inside a step: the weights and the progress may disagree
    checkpointed_at: float = dataclasses.field(default_factory=time.monotonic)

    def sync(self) -> None:
        """Add every rank's tally to the progress (a collective: all ranks call it at the same step)."""
        loss_sum, correct, seen, failed = distributed.total(self.world, self.tally, self.device)
        p = self.progress
        p.loss_sum, p.correct, p.seen, p.failed = p.loss_sum + loss_sum, p.correct + int(correct), \
            p.seen + int(seen), p.failed + int(failed)
        self.tally = [0.0, 0, 0, 0]

    def identity(self) -> dict:
        """The hyperparameters a checkpoint is saved with and checked against, the crop resolved, so
        that image-size 0 and the backbone's own size (an older image's default: 224) are one job."""
        return {**hyperparameters.as_dict(self.hp), "image-size": self.image_size or self.hp.image_size}

    def save_checkpoint(self) -> None:
        self.checkpointed_at = time.monotonic()
        if not self.world.leader:
            return
        checkpoint.save(self.checkpoint_dir, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "progress": self.progress.to_json(), "hyperparameters": json.dumps(self.identity()),
            "class_folders": json.dumps(self.class_folders),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {})})

    def checkpoint_due(self) -> bool:
        minutes = self.hp.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self.checkpointed_at >= minutes * 60

    def resume(self) -> None:
        saved = distributed.from_leader(self.world, lambda: checkpoint.load(
            self.checkpoint_dir, self.identity(), self.class_folders))
        if saved is None:
            return
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:  # ema-decay must match (checkpoint.MUST_MATCH): the average is there
            self.ema.load_state_dict(saved["ema"])
        if saved.get("scaler"):  # fp16 only: the loss scale it had reached
            self.scaler.load_state_dict(saved["scaler"])
        self.progress = Progress.from_json(saved["progress"])
        if self.progress.epoch >= self.hp.epochs:
            log.info("the checkpoint in %s holds a finished run: evaluating and saving its best model "
                     "(use a new checkpoint directory to train again)", self.checkpoint_dir)
        else:
            log.info("resuming from %s: epoch %d, step %d", self.checkpoint_dir, self.progress.epoch + 1,
                     self.progress.batches_done)
