"""`make demo`: the whole pipeline on this machine, no AWS account and no Docker, through the
launch scripts' --local mode (the same scripts that drive SageMaker):

  1. tune    python -m launch.tune --local: 4 trials of EfficientNet-Lite0 (new head) on a slice
             of the training set, Bayesian (TPE) over lr, batch size, epochs and weight decay,
             2 at a time, median early stopping; analytics table and plot
  2. deploy  python -m launch.deploy --local: the best job's model in the image's `serve`, behind
             a SageMaker Runtime gateway on 127.0.0.1
  3. invoke  launch/invoke.sh (the unchanged AWS CLI call) on one test image per class, then the
             same InvokeEndpoint call through boto3 for every test image: test accuracy
  4. report  python -m launch.report on the best job: loss curves, the Debugger rules (run here
             over the tensors its trial saved) and the profiler summary, in one HTML file

The test set is used only here, after tuning chose the model by valid accuracy.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from image_classifier import files
from launch.local import programs
from image_classifier.image_folder import IMAGE_EXTENSIONS, class_name

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """# written by demo/demo.py: the launch settings of the demo
prefix = "demo"
strategy = "Bayesian"
max_jobs = {trials}
max_parallel_jobs = 2
early_stopping = "Auto"
debug_interval = 5  # the trials are short: tensors every 5 steps give the report its loss curves

[hyperparameters]
backbone = "efficientnet_lite0"
trainable = "head"
image-size = 224

[search_space]
lr = {{ min = 0.001, max = 0.03, scaling = "Logarithmic" }}
batch-size = {{ values = [16, 32] }}
epochs = {{ min = 1, max = 3, type = "integer" }}
weight-decay = {{ min = 0.000001, max = 0.01, scaling = "Logarithmic" }}
"""
# Not a SageMaker secret: the AWS CLI and boto3 sign every request, and the local gateway ignores it.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}

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
        files.atomic_write(archive, lambda part: urllib.request.urlretrieve(IMAGEWOOF_URL, part))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != IMAGEWOOF_SHA256:
        archive.unlink()
        raise SystemExit(f"checksum mismatch for {archive.name}: {digest}; deleted, try again")
    with tarfile.open(archive) as tar:
        tar.extractall(target.parent / "raw", filter="data")
    split_imagewoof(target.parent / "raw" / "imagewoof2-320", target)
    return target


# The shared data set's layout (../shared/data/imagewoof10/README.md): test holds only ImageNet
# *validation* photos (ILSVRC2012_val_*), which no ImageNet-pretrained backbone has seen; train and
# valid hold only ImageNet *train* photos (Imagewoof2 puts both kinds in its val/). Fixed
# pseudo-random picks: each file name's SHA-256 orders its class.
PER_CLASS = {"train": 400, "valid": 100, "test": 25}
UNSEEN = "ILSVRC2012_val_"


def split_imagewoof(raw: Path, target: Path) -> None:
    def order(files):
        return sorted(files, key=lambda f: hashlib.sha256(f.name.encode()).hexdigest())
    for i, (wnid, breed) in enumerate(sorted(WNIDS.items()), start=1):
        photos = [f for split in ("train", "val") for f in (raw / split / wnid).iterdir()]
        unseen = order(f for f in photos if f.name.startswith(UNSEEN))
        seen = order(f for f in photos if not f.name.startswith(UNSEEN))
        picks = {"test": unseen[:PER_CLASS["test"]], "valid": seen[:PER_CLASS["valid"]],
                 "train": seen[PER_CLASS["valid"]:PER_CLASS["valid"] + PER_CLASS["train"]]}
        for split, chosen in picks.items():
            folder = target / split / f"{i:03d}.{breed}"
            folder.mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, folder / f"{breed}_{f.name}")  # as the shared set names them




def images_of(folder: Path) -> list[tuple[Path, str]]:
    return [(p, class_name(p.parent.name)) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS]


def slice_of(data: Path, out: Path, per_class: dict[str, int]) -> Path:
    """The first N images of each class of each channel, as symlinks: trials train on a slice."""
    shutil.rmtree(out, ignore_errors=True)
    for channel, n in per_class.items():
        for folder in sorted(p for p in (data / channel).iterdir() if p.is_dir()):
            (out / channel / folder.name).mkdir(parents=True)
            for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:n]:
                (out / channel / folder.name / path.name).symlink_to(path.resolve())
    return out


def launch(script: str, *args: str, env: dict) -> subprocess.Popen:
    """python -m launch.SCRIPT, its output echoed by the caller."""
    return subprocess.Popen([sys.executable, "-m", f"launch.{script}", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def echo_until(process: subprocess.Popen, marker: str | None = None) -> list[str]:
    lines = []
    for line in process.stdout:
        print("  " + line, end="", flush=True)
        lines.append(line)
        if marker and marker in line:
            break
    return lines


def invoke_with_cli(url: str, endpoint: str, image: Path, env: dict) -> dict:
    out = subprocess.run([str(ROOT / "launch" / "invoke.sh"), endpoint, str(image)], capture_output=True, text=True,
                         env={**env, "ENDPOINT_URL": url, "CUSTOM_ATTRIBUTES": "top_k=1"}, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"aws sagemaker-runtime invoke-endpoint failed: {out.stderr.strip()}")
    return json.loads(out.stdout)["predictions"][0]


def invoke_all(url: str, endpoint: str, images: list[tuple[Path, str]], workers: int = 4) -> list[dict]:
    """InvokeEndpoint for every image through boto3 (the AWS CLI's own client library)."""
    import boto3
    runtime = boto3.client("sagemaker-runtime", endpoint_url=url, region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
                           aws_access_key_id="local", aws_secret_access_key="local")

    def one(item):
        path, label = item
        answer = runtime.invoke_endpoint(EndpointName=endpoint, Body=path.read_bytes(), ContentType="image/jpeg",
                                         Accept="application/json", CustomAttributes="top_k=1")
        top = json.loads(answer["Body"].read())["predictions"][0]
        return {"image": str(path), "label": label, "predicted": top["label"], "probability": top["probability"]}

    results, started = [], time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(one, images), start=1):
            results.append(result)
            if i % max(1, len(images) // 5) == 0 or i == len(images):
                print(f"  predicted {i}/{len(images)} ({i / (time.monotonic() - started):.1f} images/s)", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "imagewoof10",
                        help="ImageFolder data set with train/valid/test (downloaded from fast.ai if missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output", help="where everything the demo makes goes")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--train-per-class", type=int, default=100, help="training images per class for the trials")
    parser.add_argument("--valid-per-class", type=int, default=50, help="validation images per class")
    args = parser.parse_args()
    started = time.monotonic()
    data = args.data if args.data.is_dir() else download_imagewoof(args.out / "imagewoof")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(CONFIG.format(trials=args.trials))
    env = {**os.environ, **LOCAL_CREDENTIALS, "IC_CONFIG": str(out / "config.toml"), "PYTHONUNBUFFERED": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    trial_data = slice_of(data, out / "data", {"train": args.train_per_class, "valid": args.valid_per_class})

    print(f"== 1. tune: {args.trials} local trials on {trial_data} "
          f"({args.train_per_class} train / {args.valid_per_class} valid images per class)", flush=True)
    shutil.rmtree(out / "results", ignore_errors=True)
    tune = launch("tune", "--local", "--data", str(trial_data), "--local-dir", str(out / "jobs"),
                  "--results", str(out / "results"), env=env)
    lines = echo_until(tune)
    if tune.wait() != 0:
        print("tuning failed", file=sys.stderr)
        return 1
    results = next(p.parent for p in (out / "results").glob("*/best_job.txt"))
    best_valid = next(line.split()[-1] for line in lines if line.strip().startswith("valid:accuracy"))

    print("== 2. deploy: the best job's model on a local endpoint", flush=True)
    port = programs.free_port()
    deploy = launch("deploy", "--local", "--tuning-results", str(results), "--endpoint-name", "demo-dogs",
                    "--port", str(port), env={**env, "PYTHONPATH": str(ROOT)})
    try:
        if "InService" not in "".join(echo_until(deploy, "InService")):
            print("the endpoint did not start", file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{port}"
        images = images_of(data / "test")
        print("== 3. invoke: the AWS CLI (launch/invoke.sh), one test image per class", flush=True)
        for path, label in {label: (path, label) for path, label in images}.values():
            top = invoke_with_cli(url, "demo-dogs", path, env)
            print(f"  {path.name}: {top['label']} ({top['probability']:.3f}); true: {label}", flush=True)
        print(f"== 3. invoke: InvokeEndpoint (boto3) for all {len(images)} test images", flush=True)
        predictions = invoke_all(url, "demo-dogs", images)
    finally:
        deploy.send_signal(signal.SIGTERM)  # deletes the local endpoint
        deploy.wait(60)

    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(predictions[0]))
        writer.writeheader()
        writer.writerows(predictions)
    accuracy = sum(p["label"] == p["predicted"] for p in predictions) / len(predictions)

    print("== 4. report: the best job's Debugger rules, loss curves and profile", flush=True)
    best_job = (results / "best_job.txt").read_text().strip()
    report = launch("report", best_job, "--out", str(out / "report.html"), env={**env, "PYTHONPATH": str(ROOT)})
    echo_until(report)
    if report.wait() != 0:
        print("the report failed", file=sys.stderr)
        return 1
    print(f"\ntest accuracy through the endpoint: {accuracy:.4f} ({len(predictions)} images, "
          f"{len({p['label'] for p in predictions})} classes); best trial's valid accuracy {best_valid}")
    print(f"tuning analytics: {results / 'analytics.csv'}\nobjective plot:   {results / 'objective.png'}")
    print(f"predictions:      {out / 'predictions.csv'}\njob folders:      {out / 'jobs'}")
    print(f"training report:  {out / 'report.html'} (best job {Path(best_job).name})")
    print(f"demo took {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
