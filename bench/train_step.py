"""One training step, compute only: the arithmetic `train` uses against the alternatives, in one run.

    python bench/train_step.py [--configs resnet50:all,resnet50:head,efficientnet_lite0:head]
                               [--batches 16,32,64] [--variants fp32,fp32-cl,bf16-cl,bf16-cl-compiled]

Synthetic 224x224 tensors (no decoding), SGD, forward + loss + backward + step, torch's threads.
Variants: `fp32` (default memory format, eager: a plain loop), `fp32-cl` (channels_last), `bf16-cl`
(bf16 autocast, channels_last: what `train` runs with precision=auto on a CPU with bf16
instructions), `bf16-cl-compiled` (the same step under torch.compile, whose compile time is
reported separately). Per row: images/s, the ratio to `fp32` at the same batch, and the share of
this machine's bf16 (or fp32) matmul FLOP/s that the step's FLOPs reach.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, write

import torch
from torch import nn

from image_classifier import models
from train_throughput import matmul_flops, step_flops

VARIANTS = ("fp32", "fp32-cl", "bf16-cl", "bf16-cl-compiled")


def make_step(backbone: str, trainable: str, variant: str):
    torch.manual_seed(0)
    model, spec, _ = models.build(backbone, "none", 10)
    models.freeze(model, spec, trainable)
    models.train_mode(model)
    channels_last = variant != "fp32"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    dtype = torch.bfloat16 if variant.startswith("bf16") else None

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    if variant.endswith("compiled"):
        step = torch.compile(step)
    return step, channels_last


def measure(backbone: str, trainable: str, variant: str, batch: int, seconds: float) -> dict:
    step, channels_last = make_step(backbone, trainable, variant)
    images = torch.randn(batch, 3, 224, 224)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    started = time.perf_counter()
    step(images, labels)  # the first step compiles (torch.compile) or allocates
    first = time.perf_counter() - started
    step(images, labels)
    steps, started = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - started < seconds:
        step(images, labels)
        steps += 1
    elapsed = time.perf_counter() - started
    return {"first_step_s": round(first, 2), "images_per_second": steps * batch / elapsed, "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="resnet50:all,resnet50:head,efficientnet_lite0:head")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[16, 32, 64])
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--seconds", type=float, default=6, help="timed seconds per row (at least 3 steps)")
    parser.add_argument("--name", default="train_step", help="results file name")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    ceiling = {"bf16": matmul_flops(torch.bfloat16), "fp32": matmul_flops(torch.float32)}
    print(f"matmul ceiling: bf16 {ceiling['bf16'] / 1e9:.0f}, fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s", flush=True)
    rows = []
    for config in args.configs.split(","):
        backbone, trainable = config.split(":")
        flops = step_flops(backbone, trainable)
        for batch in args.batches:
            reference = None
            for variant in args.variants:
                row = {"backbone": backbone, "trainable": trainable, "batch": batch, "variant": variant,
                       **measure(backbone, trainable, variant, batch, args.seconds)}
                reference = reference or (row["images_per_second"] if variant == "fp32" else None)
                row["vs_fp32"] = row["images_per_second"] / reference if reference else None
                arithmetic = "bf16" if variant.startswith("bf16") else "fp32"
                row["gflop_per_image"] = flops / 1e9
                row["share_of_matmul_peak"] = flops * row["images_per_second"] / ceiling[arithmetic]
                rows.append(row)
                print(f"   {config} batch {batch} {variant}: {row['images_per_second']:.1f} img/s "
                      f"(first step {row['first_step_s']} s)", flush=True)
    write(args.name, rows, {
        "backbone": "backbone", "trainable": "trained", "batch": "batch", "variant": "variant",
        "images_per_second": "img/s", "vs_fp32": "vs fp32", "first_step_s": "first step s",
        "gflop_per_image": "GFLOP/image/step", "share_of_matmul_peak": "share of matmul FLOP/s"},
        notes=f"Matmul ceiling (2048x2048, torch's {torch.get_num_threads()} threads): bf16 "
              f"{ceiling['bf16'] / 1e9:.0f} GFLOP/s, fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s; a bf16 row's share "
              "is of the bf16 ceiling, an fp32 row's of the fp32 one. `first step s` includes torch.compile's "
              "compilation for the compiled variant.", results=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
