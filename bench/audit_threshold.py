"""Where the data audit's near-duplicate threshold should sit: cosine similarity of EfficientNet-
Lite0's features (ImageNet weights, evaluation transform) between distinct real photos, against
the similarity of a photo to an altered copy of itself.

    python bench/audit_threshold.py [--photos 300] [--copies 60]

Distinct: for each of the first N photos of imagewoof10's valid and test splits, the largest
similarity to any other of them (same breed included). Copies: each of the first M test photos
against itself shrunk to 80% and saved at JPEG quality 70, cropped to its central 90%, and
mirrored. A good threshold is above nearly every distinct pair and below the copies.
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from common import DATA, RESULTS, write

import numpy as np
import torch
from PIL import Image, ImageOps

from image_classifier import hyperparameters, image_folder, models
from image_classifier.training import audit, features

ALTERATIONS = {
    "shrunk to 80%, JPEG quality 70": lambda im: _jpeg(im.resize((int(im.width * 0.8), int(im.height * 0.8))), 70),
    "central 90% crop": lambda im: im.crop((im.width // 20, im.height // 20, im.width - im.width // 20,
                                            im.height - im.height // 20)),
    "mirrored": ImageOps.mirror,
}


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--photos", type=int, default=300, help="distinct photos (from valid and test)")
    parser.add_argument("--copies", type=int, default=60, help="test photos that get altered copies")
    parser.add_argument("--name", default="audit_threshold")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    model, backbone, _ = models.build("efficientnet_lite0", "imagenet", 10)
    pre = backbone.preprocessing()
    defaults = hyperparameters.parse({})
    cache = features.FeatureCache(None, model, backbone.head, pre, None, torch.device("cpu"), seed=defaults.seed,
                                  batch_size=defaults.batch_size, num_workers=defaults.num_workers)
    photos = sorted((args.data / "test").rglob("*.JPEG"))[:args.photos // 2] + \
        sorted((args.data / "valid").rglob("*.JPEG"))[:args.photos - args.photos // 2]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, photo in enumerate(photos):
            (root / "distinct" / "x").mkdir(parents=True, exist_ok=True)
            (root / "distinct" / "x" / f"{i:04d}.jpg").symlink_to(photo)
        for k, alter in enumerate(ALTERATIONS.values()):
            folder = root / f"copy{k}" / "x"
            folder.mkdir(parents=True)
            for i, photo in enumerate(photos[:args.copies]):
                alter(Image.open(photo).convert("RGB")).convert("RGB").save(folder / f"{i:04d}.jpg", quality=95)
        unit = {}
        for split in ["distinct"] + [f"copy{k}" for k in range(len(ALTERATIONS))]:
            found = cache.eval_view(image_folder.scan(split, root / split)).features
            unit[split] = torch.nn.functional.normalize(found, dim=1)
    similar = unit["distinct"] @ unit["distinct"].T
    similar.fill_diagonal_(-1)
    nearest = similar.max(1).values.numpy()
    rows = [{"pairs": f"each of {len(photos)} distinct photos and its most similar other", "n": len(nearest),
             **_stats(nearest), "share_at_or_above_threshold": float((nearest >= audit.NEAR_DUPLICATE).mean())}]
    for k, name in enumerate(ALTERATIONS):
        own = (unit["distinct"][:args.copies] * unit[f"copy{k}"]).sum(1).numpy()
        rows.append({"pairs": f"photo and its copy, {name}", "n": len(own), **_stats(own),
                     "share_at_or_above_threshold": float((own >= audit.NEAR_DUPLICATE).mean())})
    for row in rows:
        print(row, flush=True)
    write(args.name, rows, {"pairs": "pairs", "n": "n", "min": "min", "p1": "1st percentile", "median": "median",
                            "p99": "99th percentile", "max": "max",
                            "share_at_or_above_threshold": f"share >= {audit.NEAR_DUPLICATE}"},
          notes=f"Cosine similarity of EfficientNet-Lite0 (ImageNet) features, evaluation transform; the audit's "
                f"threshold is {audit.NEAR_DUPLICATE}.", results=args.results)
    return 0


def _stats(values: np.ndarray) -> dict:
    return {"min": float(values.min()), "p1": float(np.percentile(values, 1)), "median": float(np.median(values)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max())}


if __name__ == "__main__":
    raise SystemExit(main())
