"""Make the fixtures of tests/test_saved_formats.py: what commit 644b089 writes, written by 644b089's code.

Run it with a checkout of 644b089 first on the path (the venv's editable install is the current code):

    git worktree add /tmp/prev644 644b089
    PYTHONPATH=/tmp/prev644/container .venv/bin/python tests/data/formats_644b089/make.py
    git worktree remove --force /tmp/prev644

It runs that commit's own `train.run` (the function the image's `train` program calls) for one epoch
on six real photos, and keeps what the run wrote, into this folder:

- images/<class folder>/*.jpg: the channel. The first 3 classes of imagewoof10's train split
  (sorted), the first 2 photos of each (sorted by name), shrunk to a shorter side of 96 px and saved as
  JPEG quality 85, with every file's mtime set to MTIME_NS (the feature cache's key holds each file's
  size and mtime; git keeps neither, so the test sets the same mtime on its copies).
- model/: the artifact (`artifact.save`, from `run`'s `save` closure): model.json and model.pt.gz.
- checkpoints/: `Job.save_checkpoint` (`checkpoint.save`) and `checkpoint.save_best` after the epoch:
  checkpoint.pt.gz, best_model.pt.gz, written.json.
- feature_cache/: `features.FeatureCache`'s files (feature-cache-dir): the evaluation view and the
  training view 0 of the channel (train and valid are both the images folder, so they share keys).
- info.json: the hyperparameters given, MTIME_NS, the versions that made the files.

The job: resnet18 (weights=none), 3 classes, image-size 64, trainable=head with cached features, AdamW,
batch-size 8 (all six images in one step: one real optimizer step), fp32, num-workers 0, seed 42.
So that git stays small, `models.build` is wrapped to give the model constant weights before training
(`constant_weights`: conv and linear weights 1/fan_in, biases 0, batch-norm weight 1, running mean 0,
running var 1: the frozen backbone then averages, and its features still differ from image to image);
the head leaves them with its optimizer step. Every .pt file is then gzipped (gzip mtime 0) and the raw
one removed. A test rebuilds the same backbone with the same rule: the cache key hashes its weights.
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGEWOOF = HERE.parents[3] / "shared" / "data" / "imagewoof10"  # /work/shared/data/imagewoof10 beside the repo
COMMIT = "644b089"
CLASSES, PER_CLASS, SHORT_SIDE, JPEG_QUALITY = 3, 2, 96, 85
MTIME_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, on every image
HYPERPARAMETERS = {  # as SageMaker sends them: strings
    "backbone": "resnet18", "weights": "none", "trainable": "head", "epochs": "1", "batch-size": "8",
    "optimizer": "adamw", "lr": "0.001", "image-size": "64", "precision": "fp32", "num-workers": "0",
    "seed": "42", "cache-features": "true", "feature-views": "1", "feature-cache-dir": "features",
    "checkpoint-minutes": "0",
}


def constant_weights(model):
    """Every floating tensor of the model made constant (the test has a copy of this rule)."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.fill_(1.0 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool((tensor == tensor.reshape(-1)[0]).all()):
            raise RuntimeError(f"{name} is not constant: constant_weights does not know its module")
    return model


def copy_images(source: Path, target: Path) -> None:
    from PIL import Image

    if target.exists():
        shutil.rmtree(target)
    for folder in sorted(p for p in source.iterdir() if p.is_dir())[:CLASSES]:
        (target / folder.name).mkdir(parents=True)
        for photo in sorted(p for p in folder.iterdir() if p.is_file())[:PER_CLASS]:
            with Image.open(photo) as image:
                image = image.convert("RGB")
                scale = SHORT_SIDE / min(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                out = target / folder.name / (photo.stem + ".jpg")
                image.resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
            os.utime(out, ns=(MTIME_NS, MTIME_NS))


def gzipped(source: Path, target: Path) -> None:
    """source -> target.gz, reproducibly (no name, mtime 0 in the gzip header)."""
    with open(source, "rb") as raw, open(target.with_name(target.name + ".gz"), "wb") as out:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=out, mtime=0) as packed:
            shutil.copyfileobj(raw, packed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imagewoof", type=Path, default=IMAGEWOOF, help="imagewoof10 (its train/ split is used)")
    args = parser.parse_args()

    import image_classifier
    try:
        from image_classifier import models, train  # 644b089's layout: train.py beside models.py
        from image_classifier.hyperparameters import parse
    except ImportError as e:
        sys.exit(f"this needs the code of {COMMIT} first on PYTHONPATH ({e}); see the docstring")
    import torch
    from image_classifier.vision import torchvision

    code = Path(image_classifier.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(code), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--", "."], capture_output=True,
                           text=True).stdout.strip()
    if head != COMMIT or dirty:
        sys.exit(f"image_classifier comes from {code} at {head or 'no git checkout'}{' (modified)' if dirty else ''}; "
                 f"run this with a clean checkout of {COMMIT} first on PYTHONPATH")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(min(2, torch.get_num_threads()))

    images = HERE / "images"
    copy_images(args.imagewoof / "train", images)

    built = models.build

    def build(*a, **kw):
        model, backbone, source = built(*a, **kw)
        return constant_weights(model), backbone, source

    models.build = build  # train.run calls models.build
    hp = parse(HYPERPARAMETERS)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["SAGEMAKER_BASE_DIR"] = str(base)  # feature-cache-dir 'features' is <base>/output/features
        os.environ.pop("FEATURE_CACHE_ROOT", None)
        final = train.run(hp, {"train": images, "valid": images}, base / "model", base / "checkpoints")
        for name, found in (("model", base / "model"), ("checkpoints", base / "checkpoints"),
                            ("feature_cache", base / "output" / "features")):
            target = HERE / name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir()
            for path in sorted(found.iterdir()):
                if path.suffix == ".pt":
                    gzipped(path, target / path.name)
                else:
                    shutil.copy(path, target / path.name)
    models.build = built
    cache = sorted(p.name for p in (HERE / "feature_cache").iterdir())
    if len(cache) != 2:
        sys.exit(f"expected 2 feature cache files (evaluation view, training view 0), got {cache}")
    import PIL
    info = {
        "commit": COMMIT, "made_by": "tests/data/formats_644b089/make.py", "hyperparameters": HYPERPARAMETERS,
        "image_mtime_ns": MTIME_NS, "feature_cache_files": cache,
        "images": {"source": "imagewoof10/train", "classes": CLASSES, "per_class": PER_CLASS,
                   "short_side": SHORT_SIDE, "jpeg_quality": JPEG_QUALITY},
        "best_epoch": final["best_epoch"], "valid_accuracy": final["valid_accuracy"],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "pillow": PIL.__version__},
    }
    (HERE / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"wrote {HERE} ({total / 1024:.0f} KiB in all)")


if __name__ == "__main__":
    main()
