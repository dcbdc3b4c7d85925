"""`make demo`: fine-tune EfficientNet-Lite0 on imagewoof10 with the image's own `train`, serve
the model with the image's own `serve` on 127.0.0.1, send every test image over HTTP and print
the test accuracy. No AWS account, no Docker: SAGEMAKER_BASE_DIR points the programs at a local
/opt/ml tree.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "container"))

from image_classifier import local, metrics  # noqa: E402
from image_classifier.data import IMAGE_EXTENSIONS, class_name  # noqa: E402

# fast.ai's Imagewoof (320 px). SHA-256 as registered by MLDatasets.jl; this machine has no
# internet, so the download path has not been run here.
IMAGEWOOF_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-320.tgz"
IMAGEWOOF_SHA256 = "4e4905ed7643120daaf9bf3b2ef7f3a7e8396d9bdaf254a38c6f01f618b4973d"
WNIDS = {"n02086240": "Shih-Tzu", "n02087394": "Rhodesian_ridgeback", "n02088364": "beagle",
         "n02089973": "English_foxhound", "n02093754": "Border_terrier", "n02096294": "Australian_terrier",
         "n02099601": "golden_retriever", "n02105641": "Old_English_sheepdog", "n02111889": "Samoyed",
         "n02115641": "dingo"}


def download_imagewoof(target: Path) -> Path:
    """Imagewoof from fast.ai, checked, laid out like dogImages (train/valid/test, NNN.Breed)."""
    archive = target.parent / "imagewoof2-320.tgz"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not archive.exists():
        print(f"downloading {IMAGEWOOF_URL} ...", flush=True)
        urllib.request.urlretrieve(IMAGEWOOF_URL, archive.with_suffix(".part"))
        archive.with_suffix(".part").rename(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != IMAGEWOOF_SHA256:
        archive.unlink()
        raise SystemExit(f"checksum mismatch for {archive.name}: {digest}; deleted, try again")
    with tarfile.open(archive) as tar:
        tar.extractall(target.parent / "raw", filter="data")
    raw = target.parent / "raw" / "imagewoof2-320"
    for i, (wnid, breed) in enumerate(sorted(WNIDS.items()), start=1):
        folder = f"{i:03d}.{breed}"
        shutil.copytree(raw / "train" / wnid, target / "train" / folder)
        val = sorted((raw / "val" / wnid).iterdir())
        for split, files in (("valid", val[::2]), ("test", val[1::2])):  # ImageNet val images: unseen
            (target / split / folder).mkdir(parents=True)
            for f in files:
                shutil.copy(f, target / split / folder / f.name)
    return target


def predict_over_http(url: str, images: list[tuple[Path, str]], workers: int = 4) -> list[dict]:
    def one(item):
        path, label = item
        request = urllib.request.Request(url + "/invocations", data=path.read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=60) as response:
            top = json.loads(response.read())["predictions"][0]
        return {"image": str(path), "label": label, "predicted": top["label"], "probability": top["probability"]}

    results, started = [], time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(one, images), start=1):
            results.append(result)
            if i % max(1, len(images) // 10) == 0 or i == len(images):
                print(f"  predicted {i}/{len(images)} ({i / (time.monotonic() - started):.1f} images/s)", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "imagewoof10",
                        help="ImageFolder data set with train/valid/test (downloaded from fast.ai if missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output", help="where the /opt/ml tree goes")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    data = args.data if args.data.is_dir() else download_imagewoof(args.out / "imagewoof")
    channels = {s: data / s for s in ("train", "valid", "test") if (data / s).is_dir()}
    shutil.rmtree(args.out / "ml", ignore_errors=True)
    base = local.make_tree(args.out / "ml", channels, {
        "backbone": args.backbone, "epochs": args.epochs, "batch-size": 16, "lr": 0.001, "log-interval": 25})

    print(f"== train: {args.backbone} on {data} ({', '.join(channels)})", flush=True)
    started = time.monotonic()
    train = subprocess.Popen(local.program("train"), env=local.program_env(base), stdout=subprocess.PIPE,
                             text=True)  # logs (stderr) pass through; stdout is echoed as it comes and kept
    train_stdout = []
    for line in train.stdout:
        print(line, end="", flush=True)
        train_stdout.append(line)
    if train.wait() != 0:
        reason = (base / "output" / "failure").read_text() if (base / "output" / "failure").exists() else "?"
        print(f"training failed ({train.returncode}): {reason}", file=sys.stderr)
        return 1
    print(f"trained in {time.monotonic() - started:.0f} s; model in {base / 'model'}")

    print("== serve: the image's `serve` on 127.0.0.1", flush=True)
    server = local.Serve(base, log_path=args.out / "serve.log")
    try:
        print(f"  healthy after {server.wait_healthy():.1f} s at {server.url}", flush=True)
        images = [(p, class_name(p.parent.name)) for p in sorted((data / "test").rglob("*"))
                  if p.suffix.lower() in IMAGE_EXTENSIONS]
        print(f"== predict: {len(images)} test images over HTTP", flush=True)
        results = predict_over_http(server.url, images)
    finally:
        server.stop()

    with open(args.out / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    accuracy = sum(r["label"] == r["predicted"] for r in results) / len(results)
    job_accuracy = metrics.parse("".join(train_stdout))["test:accuracy"]
    n_classes = len({r["label"] for r in results})
    print(f"\ntest accuracy over HTTP: {accuracy:.4f} ({len(results)} images, {n_classes} classes)")
    if job_accuracy:
        print(f"test accuracy reported by the training job: {job_accuracy[0]:.4f}")
    print(f"predictions: {args.out / 'predictions.csv'}; server log: {args.out / 'serve.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
