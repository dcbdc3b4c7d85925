"""The end of a run: the best epoch's weights, one pass over valid and test with them, how the
endpoint's reduced precisions agree with fp32, the artifact, and the report. `Result` is what the
run found, built once; model.json keeps its headline (`manifest`), metrics.json all of it."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import metrics, models, precision
from ..image_folder import Channel
from ..preprocessing import Preprocessing, eval_transform
from . import checkpoint, distributed, evaluation
from .batches import image_loader
from .state import RunState

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    best_epoch: int
    epochs_run: int
    valid_loss: float | None
    valid_accuracy: float | None
    skipped_files: int  # files of the channels that are not images it can read
    undecodable_images: int  # images that failed to decode while training, validating or testing
    history: list
    evaluation: dict | None = None  # channel -> evaluation.summarize's figures; None: untested (a stop)
    test: dict | None = None  # test_loss, test_accuracy, test_images
    serving: dict | None = None  # precision.key -> agreement with fp32
    audit: dict | None = None  # the data audit's summary

    def metrics(self) -> dict:
        """metrics.json: everything. A run stopped before its test has the best epoch's figures only."""
        found = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("evaluation", "test", "serving", "audit")}
        if self.evaluation is None:
            return found
        found.update(evaluation=self.evaluation, **(self.test or {}))
        if self.serving is not None:  # the leader's
            found["serving"] = self.serving
        return {**found, "audit": self.audit}

    def manifest(self) -> dict:
        """model.json's metrics: the evaluation's headline figures, no audit."""
        found = {k: v for k, v in self.metrics().items() if k != "audit"}
        if self.evaluation:
            found["evaluation"] = {name: {k: v for k, v in figures.items() if k in evaluation.HEADLINE}
                                   for name, figures in self.evaluation.items()}
        return found


def load_best(run: RunState, share: bool = True) -> None:
    """The best epoch's weights into the model (the leader's, on every rank when `share`)."""
    best = checkpoint.load_best(run.checkpoint_dir) if run.world.leader else None
    if best is not None:
        run.model.load_state_dict(best)
    if share:
        distributed.same_weights(run.world, run.model)


def result(run: RunState, channels: list, tested: SimpleNamespace | None = None, **found) -> Result:
    """The run's Result: the best epoch's figures, what the final pass `tested`, and the rest it
    `found` (serving, audit)."""
    p, row = run.progress, run.progress.best_row()
    return Result(best_epoch=p.best_epoch, epochs_run=len(p.history), valid_loss=row.get("valid_loss"),
                  valid_accuracy=row.get("valid_acc"), skipped_files=sum(len(ch.skipped) for ch in channels if ch),
                  undecodable_images=p.failed + (tested.failed if tested else 0), history=p.history,
                  evaluation=tested.evaluation if tested else None, test=tested.test if tested else None, **found)


def test(run: RunState, channels: list, pre: Preprocessing) -> SimpleNamespace:
    """The saved model on every image of valid and test, each once, and the metric lines the tuner
    and the reader see: evaluation (channel -> figures), test (its loss line) and failed (test's
    images that failed to decode)."""
    leader, best = run.world.leader, run.progress.best_row()
    if best.get("valid_acc") is not None and leader:  # the valid line last: what SageMaker's tuner scores
        print(metrics.selected_line(run.progress.best_epoch, best["valid_loss"], best["valid_acc"]), flush=True)
    run.debug.predict()  # the test pass is not part of the valid (EVAL) curves
    found, test_figures, failed = {}, None, 0
    for ch in (channels[1], channels[2]):
        if ch is None:
            continue
        result = evaluate_channel(run, ch, pre)
        found[ch.name] = result.summary
        if ch.name == "test":
            test_figures = dict(test_loss=result.loss, test_accuracy=result.summary["top1_accuracy"],
                                test_images=result.summary["images"])
            failed = result.failed
            if leader:
                print(metrics.test_line(result.loss, result.summary["top1_accuracy"]), flush=True)
        if leader:
            print(metrics.evaluation_line(ch.name, result.summary), flush=True)
        run.scalars.evaluation(ch.name, result.summary, run.progress.best_epoch)  # a no-op off the leader
    run.scalars.close()
    return SimpleNamespace(evaluation=found, test=test_figures, failed=failed)


@torch.no_grad()
def evaluate_channel(run: RunState, channel: Channel, pre: Preprocessing) -> SimpleNamespace:
    """The saved model on every image of a channel (each rank its shard; the logits are gathered):
    loss, and evaluation.summarize's figures. With cached features, the head on the channel's
    evaluation view (every rank has all of its rows)."""
    samples = channel.samples
    if run.eval_features is not None:
        found = run.eval_features(channel)
        run.net.eval()
        logits = run.net(found.features.to(run.device)).float().cpu()
        return _summary(run, channel, logits, found.ok)
    indexed = [(path, i) for i, (path, _) in enumerate(samples)]  # the label slot carries the row
    loader = image_loader(distributed.shard(run.world, indexed), eval_transform(pre), pre.resize_size,
                          run.hp.batch_size // run.world.size, run.hp.num_workers)
    logits = torch.zeros(len(samples), len(channel.folders))
    seen = torch.zeros(len(samples))
    run.model.eval()
    for inputs, rows, _ in loader:  # an image that fails to decode is left unseen
        if inputs is not None:
            logits[rows] = run.model(models.batch_to(inputs, run.device)).float().cpu()
            seen[rows] = 1
    logits = distributed.gather_rows(run.world, logits, run.device)
    seen = distributed.gather_rows(run.world, seen, run.device)
    return _summary(run, channel, logits, seen > 0)


def _summary(run: RunState, channel: Channel, logits: torch.Tensor, keep: torch.Tensor) -> SimpleNamespace:
    """keep: the rows evaluated; the others are the images that failed to decode."""
    samples = channel.samples
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)[keep]
    logits = logits[keep]
    loss = run.criterion(logits, labels).item() if len(labels) else 0.0
    files = [os.path.relpath(path, channel.root) for (path, _), k in zip(samples, keep.tolist()) if k]
    summary = evaluation.summarize(torch.softmax(logits, 1).numpy(), labels.numpy(), channel.classes, files)
    return SimpleNamespace(loss=loss, failed=int((~keep).sum()), summary=summary)


def serving_checks(model: torch.nn.Module, device: torch.device, channel: Channel, pre: Preprocessing,
                   batch_size: int, num_workers: int) -> dict:
    """How the endpoint's reduced precisions agree with fp32 on this channel (model.json keeps it;
    the endpoint's auto precision serves one only where it agrees: precision.py)."""
    # The CPU's modes even where this CPU lacks bf16 (slower, same numbers): the endpoint's may have it.
    targets = {torch.device("cpu"): precision.CPU_MODES}
    if device.type == "cuda":
        targets[device] = precision.hardware_modes(device)
    found = {}
    loader = image_loader(channel.samples, eval_transform(pre), pre.resize_size, batch_size, num_workers)
    for target, names in targets.items():
        network = copy.deepcopy(model).to(target).eval()
        served = {name: precision.prepare(network, name, target, pre.image_size) for name in names}
        for name, result in precision.check(network, served, loader, target).items():
            found[precision.key(target, name)] = result
            log.info("serving in %s on %s: top-1 agrees with fp32 on %d of %d %s images (%.2f%%), largest probability "
                     "difference %.4f", name, target.type, round(result["top1_agreement"] * result["images"]),
                     result["images"], channel.name, 100 * result["top1_agreement"],
                     result["max_probability_difference"])
    return found


def write_report(directory: Path, found: dict, channels: list[Channel]) -> None:
    """metrics.json, the evaluation (evaluation/) and the list of skipped files, uploaded by
    SageMaker as output.tar.gz."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(found, indent=2) + "\n")
    for name, summary in found.get("evaluation", {}).items():
        evaluation.write(directory / "evaluation", name, summary)
    skipped = ["\t".join(map(_tsv_cell, (ch.name, path, reason))) for ch in channels for path, reason in ch.skipped]
    if skipped:
        (directory / "skipped_files.tsv").write_text("channel\tpath\treason\n" + "\n".join(skipped) + "\n")
        log.warning("skipped %d file(s) that are not images it can read; list and reasons in %s", len(skipped),
                    directory / "skipped_files.tsv")


def _tsv_cell(text: str) -> str:
    # A file name may hold a tab or a newline: escaped, each file stays one row.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
