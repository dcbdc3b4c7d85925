"""Upload a local ImageFolder data set to S3 as the training channels.

    python -m launch.upload_data DATA_DIR [--s3-uri s3://BUCKET/PREFIX/data] [--dry-run]

DATA_DIR holds train/ (required) and optionally valid/ and test/, each with one folder per class
(dogImages: train/001.Affenpinscher/...). The channels are checked first with the image's own
scanner (classes, readable images; the same checks `train` makes), so a broken data set fails here
and not after an instance has started. Files already in S3 with the same size are skipped: a
repeated or interrupted upload sends only what is missing. Then train with
`python -m launch.train --data S3_URI` (the default S3 URI is train.py's default too).
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from image_classifier import image_folder
from image_classifier.errors import TrainingError

from launch import aws, settings as settings_mod

CHANNELS = ("train", "valid", "test")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m launch.upload_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="local folder with train/ [valid/] [test/]")
    parser.add_argument("--s3-uri", help="destination prefix (default s3://BUCKET/PREFIX/data)")
    parser.add_argument("--workers", type=int, default=16, help="parallel uploads")
    parser.add_argument("--dry-run", action="store_true", help="say what would be uploaded; upload nothing")
    settings_mod.add_arguments(parser)
    return parser.parse_args(argv)


def local_files(data_dir: Path) -> dict[str, Path]:
    """Relative key ('train/001.Affenpinscher/x.jpg') -> file, for every readable image of each channel."""
    if not (data_dir / "train").is_dir():
        raise SystemExit(f"{data_dir} has no train/ folder (expected {data_dir}/train/<class>/<image>)")
    try:
        channels = {name: image_folder.scan(name, data_dir / name) for name in CHANNELS if (data_dir / name).is_dir()}
        for name, channel in channels.items():
            if name != "train":
                image_folder.check_same_classes(channels["train"], channel)
    except TrainingError as e:
        raise SystemExit(f"not uploading: {e}") from None
    files = {}
    for name, channel in channels.items():
        if channel.skipped:
            print(f"{name}: skipping {len(channel.skipped)} unreadable file(s), e.g. {channel.skipped[0][0]}")
        print(f"{name}: {len(channel.samples)} images in {len(channel.folders)} classes")
        for path, _ in channel.samples:
            files[Path(path).relative_to(data_dir).as_posix()] = Path(path)
    return files


def remote_sizes(s3, bucket: str, prefix: str) -> dict[str, int]:
    """Key (relative to prefix) -> size of every object already under the prefix."""
    sizes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            sizes[obj["Key"][len(prefix) + 1:]] = obj["Size"]
    return sizes


def main(argv=None, session=None) -> int:
    args = parse_args(argv)
    settings = settings_mod.load(args)
    uri = (args.s3_uri or settings.s3("data")).rstrip("/")
    bucket, prefix = aws.split_uri(uri)
    files = local_files(args.data_dir)
    s3 = (session or aws.session(settings)).s3_client
    there = remote_sizes(s3, bucket, prefix)
    sizes = {key: path.stat().st_size for key, path in files.items()}
    todo = sorted(key for key, size in sizes.items() if there.get(key) != size)
    size = sum(sizes[k] for k in todo)
    print(f"{uri}: {len(files) - len(todo)} of {len(files)} files already there; "
          f"{len(todo)} to upload ({size / 1e6:.1f} MB)", flush=True)
    if args.dry_run or not todo:
        return 0
    start, done = time.monotonic(), 0
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        futures = {pool.submit(s3.upload_file, str(files[key]), bucket, f"{prefix}/{key}"): key for key in todo}
        for future in as_completed(futures):
            if future.exception():  # stop at the first failure; a rerun sends only what is missing
                pool.shutdown(cancel_futures=True)
                raise SystemExit(f"upload of {futures[future]} failed after {done} files: {future.exception()}")
            done += 1
            if done % 500 == 0 or done == len(todo):
                print(f"  {done}/{len(todo)} uploaded ({time.monotonic() - start:.0f} s)", flush=True)
    print(f"channels: {', '.join(sorted({k.split('/')[0] for k in files}))} under {uri}/")
    print(f"train with: python -m launch.train --data {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
