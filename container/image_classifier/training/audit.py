"""Data checks before training, the usual causes of inflated or fragile results: exact duplicates
(same bytes) and near-duplicates (cosine similarity of the frozen backbone's features: resized,
recompressed or lightly cropped copies) within and across train/valid/test, classes with too few
images, extreme class imbalance, and images smaller than the crop the model sees. It warns; it
never fails a job. `train` runs it on its channels (`audit` hyperparameter); `main` is the same
checks on a local folder (`python -m launch.audit DATA` runs it: see `--help`).
"""
from __future__ import annotations

import argparse
import collections
import csv
import logging
import os
import sys
from pathlib import Path

import torch

from ..image_folder import Channel

log = logging.getLogger(__name__)

# Cosine of eval-view features; bench/audit_threshold.py measured where distinct photos end and altered
# copies begin (docs/PERFORMANCE.md).
NEAR_DUPLICATE = 0.90
FEW_IMAGES = 10  # a class with fewer training images than this is flagged
IMBALANCE = 10.0  # largest class / smallest class in train
COLUMNS = ("check", "split", "file", "other_split", "other_file", "detail")


def _rel(channel: Channel, path: str) -> str:
    return os.path.relpath(path, channel.root)


def exact_duplicates(channels: list[Channel]) -> list[tuple]:
    """Every pair of files with the same bytes (the first of each group against each other)."""
    groups = collections.defaultdict(list)
    for ch in channels:
        for path, _ in ch.samples:
            groups[ch.facts[path].digest].append((ch, path))  # image_folder.scan hashed it
    rows = []
    for found in groups.values():
        (ch, path), *others = found
        rows += [("exact_duplicate", ch.name, _rel(ch, path), other.name, _rel(other, p), "same bytes")
                 for other, p in others]
    return rows


def near_duplicates(channels: list[Channel], features: list[torch.Tensor], threshold: float = NEAR_DUPLICATE,
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


def class_checks(train: Channel) -> list[tuple]:
    counts = train.counts()
    rows = [("few_images", train.name, train.folders[label], "", "", f"{n} training images (under {FEW_IMAGES})")
            for label, n in sorted(counts.items()) if n < FEW_IMAGES]
    if counts and max(counts.values()) >= IMBALANCE * min(counts.values()):
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        rows.append(("imbalance", train.name, train.folders[big], train.name, train.folders[small],
                     f"{counts[big]} against {counts[small]} training images ({counts[big] / counts[small]:.0f}x)"))
    return rows


def small_images(channels: list[Channel], image_size: int) -> list[tuple]:
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


def run(channels: list[Channel], image_size: int, features: list[torch.Tensor] | None = None,
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


USAGE = """Audit a local ImageFolder data set before training on it: exact and near-duplicate images within
and across train/valid/test (a copy of a test photo in train inflates test accuracy), classes with
too few images, extreme class imbalance, images smaller than the crop. The checks `train` runs with
audit=full, on this machine.

DATA_DIR holds train/ and optionally valid/ and test/, one folder per class. Near-duplicates
compare the backbone's features of each image (evaluation transform; EfficientNet-Lite0's
ImageNet weights ship with the image); a feature cache folder keeps them for the next run.
Exits 0 with warnings, whatever it finds; 1 only when the data cannot be read at all.
"""


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def parse_args(argv=None, prog: str = "python -m launch.audit") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="folder with train/ (and valid/, test/)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="whose features compare images")
    parser.add_argument("--weights", default="imagenet", help="the backbone's weights (imagenet or none)")
    parser.add_argument("--threshold", type=float, default=NEAR_DUPLICATE,
                        help="cosine similarity from which two images count as near-duplicates")
    parser.add_argument("--no-near-duplicates", action="store_true", help="only the checks without a backbone")
    parser.add_argument("--out", type=Path, help="the findings as TSV (default DATA/audit.tsv)")
    parser.add_argument("--feature-cache-dir", type=Path, help="keep the features here for the next run")
    parser.add_argument("--batch-size", type=_positive, default=32, help="images per backbone forward")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from .. import hyperparameters, image_folder, models
    from ..errors import TrainingError
    from . import features
    args = parse_args(argv)
    try:
        channels = [image_folder.scan(name, args.data / name) for name in ("train", "valid", "test")
                    if name == "train" or (args.data / name).is_dir()]
    except TrainingError as e:
        print(f"audit: {e}", file=sys.stderr)
        return 1
    try:
        pre = models.preprocessing(models.pretrained_cfg(args.backbone))
    except TrainingError as e:
        print(f"audit: {e}", file=sys.stderr)
        return 1
    views = None
    if not args.no_near_duplicates:
        model, backbone, source = models.build(args.backbone, args.weights, len(channels[0].folders))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        models.to_device(model, device)
        defaults = hyperparameters.parse({})
        cache = features.FeatureCache(args.feature_cache_dir, model, backbone.head, pre, None, device,
                                      seed=defaults.seed, batch_size=args.batch_size, num_workers=defaults.num_workers)
        print(f"features of {sum(len(ch.samples) for ch in channels)} images from {args.backbone} ({source})",
              flush=True)
        views = [cache.eval_view(ch).features for ch in channels]
    found, rows = run(channels, pre.image_size, views, args.threshold)
    out = args.out or args.data / "audit.tsv"
    write(out, rows)
    print(describe(found))
    for row in rows[:20]:
        print("  " + "  ".join(str(c) for c in row if c))
    if len(rows) > 20:
        print(f"  ... {len(rows) - 20} more")
    print(f"findings: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
