"""Data checks before training, the usual causes of inflated or fragile results: exact duplicates
(same bytes) and near-duplicates (cosine similarity of the frozen backbone's features: resized,
recompressed or lightly cropped copies) within and across train/valid/test, classes with too few
images, extreme class imbalance, and images smaller than the crop the model sees. It warns; it
never fails a job. `train` runs it on its channels (`audit` hyperparameter), `python -m
launch.audit DATA` on a folder.
"""
from __future__ import annotations

import collections
import csv
import logging
import os
from pathlib import Path

import torch

from . import data

log = logging.getLogger(__name__)

# Cosine of eval-view features: distinct photos reached 0.87, altered copies 0.90 and up (docs/PERFORMANCE.md).
NEAR_DUPLICATE = 0.90
FEW_IMAGES = 10  # a class with fewer training images than this is flagged
IMBALANCE = 10.0  # largest class / smallest class in train
COLUMNS = ("check", "split", "file", "other_split", "other_file", "detail")


def _rel(channel: data.Channel, path: str) -> str:
    return os.path.relpath(path, channel.root)


def exact_duplicates(channels: list[data.Channel]) -> list[tuple]:
    """Every pair of files with the same bytes (the first of each group against each other)."""
    groups = collections.defaultdict(list)
    for ch in channels:
        for path, _ in ch.samples:
            groups[ch.facts[path].digest].append((ch, path))  # data.scan hashed it
    rows = []
    for found in groups.values():
        (ch, path), *others = found
        rows += [("exact_duplicate", ch.name, _rel(ch, path), other.name, _rel(other, p), "same bytes")
                 for other, p in others]
    return rows


def near_duplicates(channels: list[data.Channel], features: list[torch.Tensor], threshold: float = NEAR_DUPLICATE,
                    block: int = 1024) -> list[tuple]:
    """Pairs whose features' cosine similarity is at least threshold (exact copies, which
    exact_duplicates reports, left out: any two files of the same bytes)."""
    owners = [(ch, path) for ch in channels for path, _ in ch.samples]
    unit = torch.nn.functional.normalize(torch.cat([f.float() for f in features]), dim=1)
    rows = []
    for start in range(0, len(unit), block):
        similar = unit[start:start + block] @ unit.T
        for i, j in (similar >= threshold).nonzero().tolist():
            i += start
            if j <= i:
                continue
            (a, pa), (b, pb) = owners[i], owners[j]
            if a.facts[pa].digest == b.facts[pb].digest:
                continue
            rows.append(("near_duplicate", a.name, _rel(a, pa), b.name, _rel(b, pb),
                         f"cosine {similar[i - start, j].item():.3f}"))
    return rows


def class_checks(train: data.Channel) -> list[tuple]:
    counts = train.counts()
    rows = [("few_images", train.name, train.folders[label], "", "", f"{n} training images (under {FEW_IMAGES})")
            for label, n in sorted(counts.items()) if n < FEW_IMAGES]
    if counts and max(counts.values()) >= IMBALANCE * min(counts.values()):
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        rows.append(("imbalance", train.name, train.folders[big], train.name, train.folders[small],
                     f"{counts[big]} against {counts[small]} training images ({counts[big] / counts[small]:.0f}x)"))
    return rows


def small_images(channels: list[data.Channel], image_size: int) -> list[tuple]:
    """Images whose shorter side is under the crop: the eval transform upsamples them."""
    rows = []
    for ch in channels:
        for path, _ in ch.samples:
            w, h = ch.facts[path].size
            if min(w, h) < image_size:
                rows.append(("too_small", ch.name, _rel(ch, path), "", "", f"{w}x{h}, under the {image_size} px crop"))
    return rows


def summary(rows: list[tuple], near_checked: bool) -> dict:
    kinds = collections.Counter(r[0] for r in rows)
    across = collections.Counter(f"{r[1]}-{r[3]}" for r in rows if r[0] in ("exact_duplicate", "near_duplicate"))
    return {"exact_duplicates": kinds["exact_duplicate"], "near_duplicates": kinds["near_duplicate"] if near_checked
            else None, "duplicate_pairs_by_splits": dict(sorted(across.items())),
            "few_image_classes": kinds["few_images"], "imbalanced": bool(kinds["imbalance"]),
            "too_small_images": kinds["too_small"]}


def run(channels: list[data.Channel], image_size: int, features: list[torch.Tensor] | None = None,
        threshold: float = NEAR_DUPLICATE) -> tuple[dict, list[tuple]]:
    """channels: train first; features: each channel's eval-view features (None: no near-duplicates)."""
    rows = exact_duplicates(channels)
    if features is not None:
        rows += near_duplicates(channels, features, threshold)
    rows += class_checks(channels[0]) + small_images(channels, image_size)
    return summary(rows, features is not None), rows


def describe(found: dict) -> str:
    """One log line."""
    splits = ", ".join(f"{k} {v}" for k, v in found["duplicate_pairs_by_splits"].items()) or "none"
    near = "not checked" if found["near_duplicates"] is None else found["near_duplicates"]
    return (f"data audit: {found['exact_duplicates']} exact and {near} near-duplicate pair(s) (by splits: {splits}); "
            f"{found['few_image_classes']} class(es) with under {FEW_IMAGES} training images; "
            f"{'extreme' if found['imbalanced'] else 'no extreme'} class imbalance; "
            f"{found['too_small_images']} image(s) smaller than the crop")


def write(path: Path, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
