"""Frozen TorchScript graph or torch.compile for the endpoint's reduced precision: start-up cost
and latency, in-process, one image at a time on one torch thread (as each MMS worker runs).

    python bench/serve_graphs.py [--backbones resnet50,efficientnet_lite0] [--seconds 5]

Contenders per backbone (random weights: speed does not depend on them): `fp32 eager` (today's
fp32 `serve`), `bf16 frozen` (precision.py: bf16 weights, channels_last, traced and
frozen), `bf16 compiled` (bf16 weights, channels_last, torch.compile with inductor's freezing).
Start-up: seconds from the fp32 network to the first answer (tracing or compiling included).
Also what CustomAttributes `explain=gradcam` adds per image: Grad-CAM on the fp32 network
(forward and backward) and the heat map as a PNG the size of a typical test photo (320x427).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from common import RESULTS, write

import torch

from image_classifier import gradcam, models
from image_classifier.preprocessing import Preprocessing
from image_classifier import precision
from image_classifier.serving import explanations

CPU = torch.device("cpu")


def compiled_bf16(network: torch.nn.Module):
    import torch._inductor.config as inductor
    inductor.freezing = True  # weights as constants: folds batch norm, prepacks for oneDNN
    net = torch.compile(copy.deepcopy(network).to(torch.bfloat16).eval())
    return lambda x: net(x.to(torch.bfloat16)).float()


def contenders(network: torch.nn.Module, size: int):
    yield "fp32 eager", lambda: network
    yield "bf16 frozen", lambda: precision.prepare(network, "bf16", CPU, size)
    yield "bf16 compiled", lambda: compiled_bf16(network)
    yield "explain=gradcam", lambda: explainer(network, size)


def explainer(network: torch.nn.Module, size: int):
    """The work explain=gradcam adds to an answer, for one image."""
    layer = gradcam.last_spatial_layer(network, size)
    pre = Preprocessing(size, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")

    answer = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        found = gradcam.explain(network, layer, x[0])
        explanations.answer(found, [str(i) for i in range(10)], (320, 427), pre)
        if "logits" not in answer:  # once, outside the timed runs: the served answer is not explain's work
            with torch.no_grad():
                answer["logits"] = network(x)
        return answer["logits"]
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="resnet50,efficientnet_lite0")
    parser.add_argument("--seconds", type=float, default=5, help="timed seconds per contender")
    parser.add_argument("--name", default="serve_graphs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for backbone in args.backbones.split(","):
        network = models.to_device(models.build_for_inference(backbone, 10).eval(), CPU)
        image = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            reference = torch.softmax(network(image), 1)
            for name, make in contenders(network, 224):
                started = time.perf_counter()
                served = make()
                served(image)
                startup = time.perf_counter() - started
                times, deadline = [], time.perf_counter() + args.seconds
                while len(times) < 5 or time.perf_counter() < deadline:
                    t = time.perf_counter()
                    out = served(image)
                    times.append(time.perf_counter() - t)
                row = {"backbone": backbone, "contender": name, "startup_s": round(startup, 2),
                       "p50_ms": statistics.median(times) * 1e3, "runs": len(times),
                       "max_probability_difference": (torch.softmax(out.float(), 1) - reference).abs().max().item()}
                rows.append(row)
                print(f"   {backbone} {name}: start-up {row['startup_s']} s, p50 {row['p50_ms']:.1f} ms", flush=True)
        for row in rows:
            if row["backbone"] == backbone:
                fp32 = next(r for r in rows if r["backbone"] == backbone and r["contender"] == "fp32 eager")
                row["vs_fp32"] = row["p50_ms"] / fp32["p50_ms"]
    write(args.name, rows, {"backbone": "backbone", "contender": "contender", "startup_s": "start-up s",
                            "p50_ms": "p50 ms (batch 1, 1 thread)", "vs_fp32": "vs fp32 eager",
                            "max_probability_difference": "largest prob. diff. vs fp32", "runs": "runs"},
          notes="Start-up: from the loaded fp32 network to the first answer (deep copy, cast, trace and freeze, or "
                "torch.compile's compilation). p50 over back-to-back single images after that first one.",
          results=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
