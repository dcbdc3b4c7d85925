"""Accuracy on imagewoof10's test split (250 ImageNet-validation photos, unseen by the pretrained
backbone and never used for selection), with its 95% interval: the demo's configuration, and each
backbone that has ImageNet weights offline (EfficientNet-Lite0/1/2) x what is trained (the head,
on cached features or not; the last stage too) x the recipe (none, or docs/TRAINING.md's), so
that each choice's effect on accuracy is measured beside its time.

    python bench/accuracy.py [--configs NAME,...] [--epochs N]    (names: CONFIGS below)

Each configuration is a real `train` run (the image's program, natively) on imagewoof10's train
and valid folders (or the demo's slice of them), tested on the whole test folder.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import DATA, RESULTS, run_train, subset, write

from image_classifier import metrics

# Only EfficientNet-Lite0/1/2 have ImageNet weights offline (bundled; ../shared/NOTES.md): the ResNets
# would start from random weights, and their accuracy here would say nothing about the product.
HEAD = {"backbone": "efficientnet_lite0", "trainable": "head", "batch-size": 32, "epochs": 10}
LAST_STAGE = {"backbone": "efficientnet_lite0", "trainable": "last-stage", "batch-size": 32, "epochs": 5, "lr": 5e-4,
              "warmup-epochs": 1}
HEAD_RECIPE = {"label-smoothing": 0.1, "ema-decay": 0.999}
RECIPE = {**HEAD_RECIPE, "augment": "trivialaugment", "random-erasing": 0.25, "layer-decay": 0.75}
CONFIGS = {
    # demo/demo.py: its slice of the data (100 train, 50 valid images per class), its fixed
    # hyperparameters, and the middle of its search space (lr 0.001..0.03 log, 1..3 epochs).
    "demo": ({"backbone": "efficientnet_lite0", "trainable": "head", "lr": 0.0055, "batch-size": 32,
              "epochs": 2, "weight-decay": 1e-4}, {"train": 100, "valid": 50}),
    "head": (HEAD, None),
    "head-4-views": ({**HEAD, "feature-views": 4}, None),
    "head-no-cache": ({**HEAD, "cache-features": False}, None),
    # The larger bundled backbones, each at its own input size (timm's pretrained configuration).
    "lite1-head": ({**HEAD, "backbone": "efficientnet_lite1"}, None),
    "lite2-head": ({**HEAD, "backbone": "efficientnet_lite2"}, None),
    # Fine-tuning the last stage too: every epoch decodes every image and runs the backbone.
    "lite0-last-stage": (LAST_STAGE, None),
    "lite2-last-stage": ({**LAST_STAGE, "backbone": "efficientnet_lite2"}, None),
    # The recipe (docs/TRAINING.md): what applies to a head on cached features, and everything for
    # fine-tuning (mixup and cutmix stay off: 4000 training images is under BiT's 20k).
    "lite0-head-recipe": ({**HEAD, **HEAD_RECIPE}, None),
    "lite2-head-recipe": ({**HEAD, **HEAD_RECIPE, "backbone": "efficientnet_lite2"}, None),
    # Lite2 above its own 260 px (Touvron et al., 2019: a larger test crop helps; here train and test alike).
    "lite2-head-300": ({**HEAD, "backbone": "efficientnet_lite2", "image-size": 300}, None),
    "lite0-last-stage-recipe": ({**LAST_STAGE, **RECIPE}, None),
    "lite2-last-stage-recipe": ({**LAST_STAGE, **RECIPE, "backbone": "efficientnet_lite2"}, None),
}


def run(name: str, hp: dict, data: Path, test: Path, work: Path) -> dict:
    started = time.perf_counter()
    stdout = run_train(work / name, {"train": data / "train", "valid": data / "valid", "test": test}, hp)
    seconds = time.perf_counter() - started
    found = metrics.parse(stdout)
    epochs = found["epoch:seconds"]
    recipe = {k: hp[k] for k in RECIPE if k in hp}
    return {"config": name, "backbone": hp["backbone"], "trainable": hp["trainable"],
            "recipe": ", ".join(f"{k} {v}" for k, v in recipe.items()) or "none",
            "cache": "off" if hp.get("cache-features") is False or hp["trainable"] != "head"
            else f"{hp.get('feature-views', 1)} view(s)",
            "epochs": len(epochs), "train_images": sum(1 for _ in (data / "train").rglob("*.JPEG")),
            "best_valid_accuracy": max(found["valid:accuracy"]), "test_accuracy": found["test:accuracy"][-1],
            "test_accuracy_ci95": (f"{found['test:accuracy_ci95_low'][-1]:.3f} to "
                                   f"{found['test:accuracy_ci95_high'][-1]:.3f}"),
            "test_top5_accuracy": found["test:top5_accuracy"][-1], "test_macro_f1": found["test:macro_f1"][-1],
            "test_calibration_error": found["test:calibration_error"][-1],
            "first_epoch_seconds": epochs[0], "later_epoch_seconds": sum(epochs[1:]) / max(len(epochs) - 1, 1),
            "job_seconds": seconds, "hyperparameters": hp}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"some of: {', '.join(CONFIGS)}")
    parser.add_argument("--epochs", type=int, help="override every configuration's epochs")
    parser.add_argument("--per-class", type=int, help="train/valid/test images per class (default: all)")
    parser.add_argument("--name", default="accuracy", help="results file name")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:  # before hours of runs, not after them
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.per_class:
            n = args.per_class
            args.data = subset(args.data, Path(tmp) / "small", {"train": n, "valid": n, "test": n})
        for name in names:
            hp, per_class = CONFIGS[name]
            hp = {**hp, "epochs": args.epochs or hp["epochs"]}
            data = subset(args.data, Path(tmp) / f"slice-{name}", per_class) if per_class else args.data
            print(f"== {name}: {hp}", flush=True)
            rows.append(run(name, hp, data, args.data / "test", Path(tmp)))
            print(rows[-1], flush=True)
            write_rows(args.name, rows, args.results)  # after each: a long run stopped keeps what it measured
    return 0


def write_rows(name: str, rows: list[dict], results: Path) -> None:
    write(name, rows, {
        "config": "config", "backbone": "backbone", "trainable": "trained", "recipe": "recipe",
        "cache": "cached features",
        "train_images": "train images", "epochs": "epochs", "best_valid_accuracy": "best valid acc",
        "test_accuracy": "test acc", "test_accuracy_ci95": "test acc 95% interval", "test_top5_accuracy": "test top-5",
        "test_macro_f1": "test macro F1", "test_calibration_error": "test ECE",
        "first_epoch_seconds": "epoch 1 s", "later_epoch_seconds": "later epochs s",
        "job_seconds": "whole job s"},
        notes="Test accuracy of the best-valid epoch's model on all of imagewoof10's test split (250 ImageNet "
              "validation photos; the interval is Wilson's 95% score interval, about +-4 points here). Epoch seconds "
              "are training only, as `train` reports them; the whole job includes validation, the test pass "
              "and start-up.", results=results)


if __name__ == "__main__":
    raise SystemExit(main())
