"""Data-parallel scaling of the image's `train` on this machine: the same job (same global batch,
same steps) on 1 process and on N hosts (one /opt/ml tree and one process each, gloo on
127.0.0.1), each process given an equal share of the cores.

    python bench/distributed_scaling.py [--hosts 2] [--per-class 16] [--epochs 2] [--backbone efficientnet_lite0]
                                        [--trainable all] [--batch-size 32] [--image-size 160]

On one machine the hosts share its cores and memory bandwidth, so this measures what data
parallelism costs (gradient all-reduce, the per-step stop/NaN agreement, sharded evaluation) and
how well N processes use N cores, not what N instances would give. Images per second are of the
last epoch, training only, as `train` prints them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import DATA, OFFLINE_WEIGHTS, RESULTS, subset, write

from image_classifier import metrics
from launch.local import programs


def run(trees: list[Path], threads: int) -> tuple[str, float]:
    env = {**programs.hosts_env(len(trees)), "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    procs = [subprocess.Popen(programs.program("train"), env=programs.program_env(tree, **env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tree in trees]
    outs = [p.communicate() for p in procs]
    seconds = time.perf_counter() - started
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"train failed: {err[-2000:]}")
    return outs[0][0], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--trainable", default="all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--name", default="distributed_scaling")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    hp = {"backbone": args.backbone, "weights": OFFLINE_WEIGHTS.get(args.backbone, "none"),
          "trainable": args.trainable, "epochs": args.epochs, "batch-size": args.batch_size,
          "image-size": args.image_size, "num-workers": 0, "precision": "fp32"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(DATA, Path(tmp) / "data", {"train": args.per_class, "valid": max(2, args.per_class // 4)})
        channels = {"train": data / "train", "valid": data / "valid"}
        contenders = [("1 process, all cores", 1, cores), ("1 process, 1 core's share", 1, max(1, cores // args.hosts)),
                      (f"{args.hosts} hosts, {max(1, cores // args.hosts)} thread(s) each", args.hosts,
                       max(1, cores // args.hosts))]
        for i, (name, hosts, threads) in enumerate(contenders):
            trees = programs.make_hosts(Path(tmp) / f"run{i}", hosts, channels, hp)
            out, seconds = run(trees, threads)
            found = metrics.parse(out)
            rows.append({"setup": name, "hosts": hosts, "threads_per_process": threads,
                         "images_per_second": found["train:images_per_second"][-1],
                         "valid_accuracy": found["valid:accuracy"][-1], "job_seconds": round(seconds, 1)})
            print(rows[-1], flush=True)
    base = rows[1]["images_per_second"]
    for row in rows:
        row["vs_one_share"] = round(row["images_per_second"] / base, 2)
    write(args.name, rows, {
        "setup": "setup", "images_per_second": "img/s (last epoch)", "vs_one_share": "vs 1 process on one share",
        "valid_accuracy": "valid acc", "job_seconds": "job wall s"},
        notes=f"{args.backbone} trainable={args.trainable}, {args.image_size} px, global batch {args.batch_size}, "
              f"{args.epochs} epochs of {args.per_class} images per class (imagewoof10), fp32, num-workers 0. "
              "All contenders run the same steps; the hosts share this machine's cores.", results=args.results)


if __name__ == "__main__":
    main()
