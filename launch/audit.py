"""Audit a local ImageFolder data set before training on it: exact and near-duplicate images within
and across train/valid/test (a copy of a test photo in train inflates test accuracy), classes with
too few images, extreme class imbalance, images smaller than the crop. The image's own checks
(image_classifier/audit.py, what `train` runs with audit=full), on this machine.

    python -m launch.audit DATA_DIR [--backbone efficientnet_lite0] [--threshold 0.95]
                                    [--out DATA_DIR/audit.tsv] [--feature-cache-dir DIR]

DATA_DIR holds train/ and optionally valid/ and test/, one folder per class. Near-duplicates
compare the backbone's features of each image (evaluation transform; EfficientNet-Lite0's
ImageNet weights ship with the image); a feature cache folder keeps them for the next run.
Exits 0 with warnings, whatever it finds; 1 only when the data cannot be read at all.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    from image_classifier import audit
    parser = argparse.ArgumentParser(prog="python -m launch.audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="folder with train/ (and valid/, test/)")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="whose features compare images")
    parser.add_argument("--weights", default="imagenet", help="the backbone's weights (imagenet or none)")
    parser.add_argument("--threshold", type=float, default=audit.NEAR_DUPLICATE,
                        help="cosine similarity from which two images count as near-duplicates")
    parser.add_argument("--no-near-duplicates", action="store_true", help="only the checks without a backbone")
    parser.add_argument("--out", type=Path, help="the findings as TSV (default DATA/audit.tsv)")
    parser.add_argument("--feature-cache-dir", type=Path, help="keep the features here for the next run")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from image_classifier import audit, data, features, hyperparameters, models
    from image_classifier.errors import TrainingError
    try:
        channels = [data.scan(name, args.data / name) for name in ("train", "valid", "test")
                    if name == "train" or (args.data / name).is_dir()]
    except TrainingError as e:
        print(f"audit: {e}", file=sys.stderr)
        return 1
    backbone = models.get_backbone(args.backbone)
    pre = backbone.preprocessing(224)
    views = None
    if not args.no_near_duplicates:
        model, _, source = models.build(args.backbone, args.weights, len(channels[0].folders))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        models.to_device(model, device)
        hp = hyperparameters.parse({"batch-size": args.batch_size, "backbone": args.backbone})
        cache = features.FeatureCache(args.feature_cache_dir, model, backbone.head, pre, None, device, hp)
        print(f"features of {sum(len(ch.samples) for ch in channels)} images from {args.backbone} ({source})",
              flush=True)
        views = [cache.eval_view(ch).features for ch in channels]
    found, rows = audit.run(channels, pre.image_size, views, args.threshold)
    out = args.out or args.data / "audit.tsv"
    audit.write(out, rows)
    print(audit.describe(found))
    for row in rows[:20]:
        print("  " + "  ".join(str(c) for c in row if c))
    if len(rows) > 20:
        print(f"  ... {len(rows) - 20} more")
    print(f"findings: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
