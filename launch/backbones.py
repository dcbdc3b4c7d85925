"""The backbones a job can fine-tune, and their weights staged in S3 for jobs without internet.

    python launch/backbones.py [list] [--filter 'convnext*'] [--sort top1|params|gflops]
                               [--max-params 30] [--limit 40] [--all-sizes]
    python launch/backbones.py stage NAME [--s3-uri s3://BUCKET/PREFIX/pretrained] [--dry-run]

list: timm's ImageNet validation results (top-1 and top-5 at the size evaluated, parameters in
millions, GFLOPs at that size), vendored from timm's repository (launch/data/README.md), marking
the weights bundled in the image and those staged from here.

stage: gets NAME's ImageNet weights once on this machine (timm: the Hugging Face Hub, or
torchvision's URL for the ResNet names), writes them as timm's local-dir folder (config.json and
model.safetensors) with staged.json (their SHA-256, which `train` checks), and uploads them to S3
under a key named by their content: S3_URI/ARCH.TAG/SHA256[:16]/. A second stage of the same
weights uploads nothing. The URI is recorded in launch/staged.json, so that launch.train and
launch.tune give it to their jobs as the 'pretrained' channel (or pass --pretrained S3_URI): then
a job with --network-isolation trains it without internet.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import sys
import tempfile
from pathlib import Path

from launch import aws, settings as settings_mod

CATALOGUE = Path(__file__).with_name("data") / "timm_imagenet.csv"
STAGED = Path(__file__).with_name("staged.json")  # this machine's record of what it staged (not in git)
SORTS = {"top1": ("top1", True), "params": ("params_m", False), "gflops": ("gflops", False)}


def catalogue() -> list[dict]:
    """timm's ImageNet results: one row per model and evaluated size, best top-1 first."""
    with open(CATALOGUE, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["img_size"] = int(row["img_size"])
        for key in ("top1", "top5", "params_m", "gflops"):
            row[key] = float(row[key]) if row[key] else None
    return rows


def staged_record(path: Path = None) -> dict:
    path = path or STAGED
    return json.loads(path.read_text()) if path.is_file() else {}


def staged_uri(settings, backbone: str, path: Path = None, local: bool = False) -> str | None:
    """The 'pretrained' channel of a job: --pretrained (with --local, a folder), else what `stage`
    recorded for this backbone under this bucket and prefix."""
    if settings.pretrained:
        if local and not Path(settings.pretrained).is_dir():
            raise SystemExit(f"--pretrained {settings.pretrained}: with --local, a folder (a timm local-dir or "
                             "one weights file)")
        return settings.pretrained if local else settings.pretrained.rstrip("/") + "/"
    if local:
        return None
    from image_classifier import models
    found = staged_record(path).get(_root(settings), {}).get(models.timm_name(backbone))
    return found["uri"] if found else None


def _root(settings, s3_uri: str | None = None) -> str:
    return (s3_uri or settings.s3("pretrained")).rstrip("/")


def bundled(backbone: str) -> bool:
    from image_classifier import models
    return models.timm_name(backbone) in models.BUNDLED


def check_isolation(settings, path: Path = None, local: bool = False) -> str | None:
    """The job's 'pretrained' channel (an S3 URI; with --local a folder), or None. With
    --network-isolation a backbone needs weights it can reach: bundled in the image or staged.
    Refused here, before any request."""
    from image_classifier import hyperparameters
    hp = hyperparameters.parse(settings.hyperparameters)
    backbone = hp.backbone
    uri = staged_uri(settings, backbone, path, local)
    if settings.network_isolation and hp.weights != "none" and uri is None and not bundled(backbone):
        raise SystemExit(f"--network-isolation: the job cannot download {backbone}'s weights, and they are neither "
                         f"bundled in the image nor staged. Stage them first (python launch/backbones.py stage "
                         f"{backbone}), give --pretrained S3_URI, or choose a bundled backbone "
                         "(efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)")
    return uri


def stage(name: str, settings, s3, s3_uri: str | None = None, dry_run: bool = False, path: Path = None) -> str:
    """Stage NAME's ImageNet weights: a timm local-dir folder in S3, named by its SHA-256. Returns its URI."""
    from image_classifier import files, models, weights
    from image_classifier.vision import timm
    full = models.timm_name(name)
    root = _root(settings, s3_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / full
        print(f"{full}: loading its ImageNet weights on this machine", flush=True)
        model, source = models.imagenet_model(name)
        timm.models.save_for_hf(model, folder, safe_serialization=True)
        tensors = folder / "model.safetensors"
        digest = files.sha256(tensors)
        record = {"backbone": name, "timm": full, "sha256": digest, "bytes": tensors.stat().st_size,
                  "source": source, "timm_version": timm.__version__}
        (folder / weights.STAGED_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        uri = f"{root}/{full}/{digest[:16]}/"
        bucket, prefix = aws.split_uri(uri)
        done = _exists(s3, bucket, f"{prefix}/{weights.STAGED_RECORD}")
        print(f"{full}: {record['bytes'] / 1e6:.1f} MB, SHA-256 {digest[:16]}...; "
              + ("already in " if done else "would upload to " if dry_run else "uploading to ") + uri, flush=True)
        if dry_run:
            return uri
        if not done:  # the record last: its presence says the folder is complete
            for file in ("model.safetensors", "config.json", weights.STAGED_RECORD):
                s3.upload_file(str(folder / file), bucket, f"{prefix}/{file}")
    path = path or STAGED
    ledger = staged_record(path)
    ledger.setdefault(root, {})[full] = {"uri": uri, "sha256": digest, "backbone": name}
    path.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    print(f"recorded in {path}: launch.train and launch.tune pass it as the 'pretrained' channel "
          f"(with --hp backbone={name})")
    return uri


def _exists(s3, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def listing(rows: list[dict], pattern: str = "*", sort: str = "top1", max_params: float | None = None,
            limit: int = 40, all_sizes: bool = False, staged: set | None = None) -> list[str]:
    """The catalogue's lines, as `list` prints them."""
    from image_classifier import models
    seen, shown = set(), []
    key, descending = SORTS[sort]
    rows = [r for r in rows if fnmatch.fnmatch(r["model"], pattern)
            or fnmatch.fnmatch(r["model"].split(".")[0], pattern)]
    rows = [r for r in rows if max_params is None or (r["params_m"] or 0) <= max_params]
    rows.sort(key=lambda r: (r[key] is None, -(r[key] or 0) if descending else (r[key] or 0)))
    for row in rows:
        if not all_sizes and row["model"] in seen:  # its best-scoring size only
            continue
        seen.add(row["model"])
        where = ("bundled" if row["model"] in models.BUNDLED else "staged" if row["model"] in (staged or set())
                 else "download")
        gflops = f"{row['gflops']:.1f}" if row["gflops"] is not None else "-"
        shown.append(f"{row['model']:<58} {row['img_size']:>4} {row['top1']:>6.2f} {row['top5']:>6.2f} "
                     f"{row['params_m']:>8.1f} {gflops:>7} {where}")
        if len(shown) >= limit:
            break
    header = f"{'backbone (arch.tag)':<58} {'size':>4} {'top-1':>6} {'top-5':>6} {'params M':>8} {'GFLOPs':>7} weights"
    return [header, *shown]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python launch/backbones.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    shown = commands.add_parser("list", help="the catalogue (the default command)")
    shown.add_argument("--filter", default="*", help="shell pattern on arch or arch.tag, e.g. 'convnext*'")
    shown.add_argument("--sort", choices=SORTS, default="top1")
    shown.add_argument("--max-params", type=float, help="at most this many million parameters")
    shown.add_argument("--limit", type=int, default=40)
    shown.add_argument("--all-sizes", action="store_true", help="every evaluated size, not each model's best")
    staging = commands.add_parser("stage", help="stage a backbone's weights in S3 for isolated jobs")
    staging.add_argument("name", help="arch, arch.tag or one of the original names (resnet50, ...)")
    staging.add_argument("--s3-uri", help="root of staged weights (default s3://BUCKET/PREFIX/pretrained)")
    staging.add_argument("--dry-run", action="store_true", help="load and hash; upload nothing")
    settings_mod.add_arguments(staging)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("list", "stage", "-h", "--help"):
        argv = ["list", *argv]  # list is the default command
    return parser.parse_args(argv)


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    if args.command == "list":
        ledger = staged_record()
        staged = {name for by_root in ledger.values() for name in by_root}
        print("\n".join(listing(catalogue(), args.filter, args.sort, args.max_params, args.limit, args.all_sizes,
                                staged)))
        print(f"\ntimm's ImageNet-1k validation results ({CATALOGUE.name}); GFLOPs from timm's inference benchmark, "
              "scaled to the size shown. Train one with --hp backbone=NAME.")
        return 0
    from image_classifier.errors import TrainingError
    settings = settings_mod.load(args)
    s3 = (session or aws.session(settings)).s3_client
    try:
        stage(args.name, settings, s3, args.s3_uri, args.dry_run)
    except TrainingError as e:
        raise SystemExit(f"cannot stage {args.name}: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
