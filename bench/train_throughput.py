"""Training throughput: the image's `train` against the baseline loop (bench/baseline_loop.py),
same model, same data (real imagewoof10 JPEGs), same run; and the share of the machine's matmul
FLOP/s that training achieves.

    python bench/train_throughput.py [--per-class 16] [--epochs 3] [--configs resnet50:all,...]

Per configuration (backbone:trainable, or backbone:head:no-cache for a frozen backbone without
cached features): images per second of the first epoch and of the later epochs (training only,
as `train` reports them), for both.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import DATA, OFFLINE_WEIGHTS, RESULTS, run_train, subset, write

import torch
from torch import nn

from image_classifier import metrics, models


def matmul_flops(dtype=torch.float32, n: int = 2048, repeat: int = 10) -> float:
    """This machine's matmul FLOP/s with torch's threads: the ceiling training is measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.perf_counter() - started)


def step_flops(backbone: str, trainable: str, batch: int = 2) -> float:
    """FLOPs of one training step per image (forward, and backward where gradients flow)."""
    from torch.utils.flop_counter import FlopCounterMode
    model, spec, _ = models.build(backbone, "none", 10)
    models.freeze(model, spec, trainable)
    models.train_mode(model)
    with FlopCounterMode(display=False) as counter:
        logits = model(torch.randn(batch, 3, 224, 224))
        nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch


def ours(data: Path, backbone: str, trainable: str, cache: bool, epochs: int, batch: int, work: Path) -> list[dict]:
    found = metrics.parse(run_train(work / f"ours-{backbone}-{trainable}-{cache}",
                                    {"train": data / "train", "valid": data / "valid"},
                                    {"backbone": backbone, "trainable": trainable, "epochs": epochs,
                                     "batch-size": batch, "weights": OFFLINE_WEIGHTS.get(backbone, "none"),
                                     "cache-features": cache}))
    return [{"epoch": i + 1, "seconds": s, "images_per_second": ips}
            for i, (s, ips) in enumerate(zip(found["epoch:seconds"], found["train:images_per_second"]))]


def baseline(data: Path, backbone: str, trainable: str, epochs: int, batch: int) -> list[dict]:
    import baseline_loop
    model, spec, _ = models.build(backbone, OFFLINE_WEIGHTS.get(backbone, "none"), 10)
    models.freeze(model, spec, trainable)
    return baseline_loop.train(model, data / "train", epochs, batch)


def later(epochs: list[dict]) -> float:
    rest = epochs[1:] or epochs
    return sum(e["images_per_second"] for e in rest) / len(rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--per-class", type=int, default=16, help="training images per class (10 classes)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--configs", default="efficientnet_lite0:head,efficientnet_lite0:head:no-cache,"
                                             "resnet50:head,resnet50:head:no-cache,resnet50:all")
    parser.add_argument("--name", default="train_throughput", help="results file name")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    from image_classifier import precision
    # `train` runs in its `auto` precision: measure against the ceiling of that arithmetic
    amp = precision.resolve("auto", torch.device("cpu"))
    peak = matmul_flops(amp or torch.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.data, Path(tmp) / "data", {"train": args.per_class, "valid": 2})
        for config in args.configs.split(","):
            backbone, trainable, *rest = config.split(":")
            cache = trainable == "head" and rest != ["no-cache"]
            print(f"== {config}", flush=True)
            base = baseline(data, backbone, trainable, args.epochs, args.batch_size)
            mine = ours(data, backbone, trainable, cache, args.epochs, args.batch_size, Path(tmp))
            flops = step_flops(backbone, trainable)
            # With cached features only epoch 1 runs the backbone (the FLOPs counted): judge that one.
            computing = mine[0]["images_per_second"] if cache else later(mine)
            rows.append({
                "config": f"{backbone} {trainable}" + (", cached features" if cache else ""),
                "images": 10 * args.per_class,
                "baseline_first": base[0]["images_per_second"], "baseline_later": later(base),
                "ours_first": mine[0]["images_per_second"], "ours_later": later(mine),
                "speedup_first": mine[0]["images_per_second"] / base[0]["images_per_second"],
                "speedup_later": later(mine) / later(base),
                "gflops_per_image": flops / 1e9,
                "matmul_share": computing * flops / peak,
                "baseline_epochs": base, "ours_epochs": mine})
    write(args.name, rows, {
        "config": "backbone, trained", "images": "images/epoch", "baseline_first": "baseline img/s (epoch 1)",
        "ours_first": "ours img/s (epoch 1)", "speedup_first": "speedup (epoch 1)",
        "baseline_later": "baseline img/s (later)", "ours_later": "ours img/s (later)",
        "speedup_later": "speedup (later)", "gflops_per_image": "GFLOP/image/step",
        "matmul_share": "share of matmul FLOP/s"},
        notes=f"`train` ran in {precision.name(amp)} (precision=auto); the baseline in fp32. Matmul ceiling: "
              f"{peak / 1e9:.0f} GFLOP/s ({precision.name(amp)}, 2048x2048, torch's threads). With cached "
              "features the share is epoch 1's, the only epoch that runs the backbone.", results=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
