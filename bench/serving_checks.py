"""What `train`'s last step costs: the serving-precision agreement check (finish.serving_checks),
one pass over the test images for all the CPU's modes (now) against one pass per mode (before:
each pass decoded every image again and ran fp32 again). Both compute the same numbers; the
table says they agree.

    .venv/bin/python bench/serving_checks.py                      # 250 test photos, both backbones
    .venv/bin/python bench/serving_checks.py --per-class 2 --backbones efficientnet_lite0
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

from common import DATA, OFFLINE_WEIGHTS, RESULTS, subset, write

import torch

from image_classifier import image_folder, models
from image_classifier.hyperparameters import parse
from image_classifier.preprocessing import eval_transform
from image_classifier import precision
from image_classifier.training.batches import image_loader


def timed(network, served: dict, loader) -> tuple[float, dict]:
    started = time.perf_counter()
    found = precision.check(network, served, loader, torch.device("cpu"))
    return time.perf_counter() - started, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=25, help="test photos per class (25: all 250)")
    parser.add_argument("--backbones", default="efficientnet_lite0,resnet50")
    parser.add_argument("--name", default="serving_checks")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        test = image_folder.scan("test", subset(DATA, Path(tmp), {"test": args.per_class}) / "test")
        for backbone in args.backbones.split(","):
            network, _, _ = models.build(backbone, OFFLINE_WEIGHTS.get(backbone, "none"), len(test.folders))
            network = network.eval()
            pre = models.preprocessing(models.pretrained_cfg(backbone))
            hp = parse({"backbone": backbone, "num-workers": 2})
            loader = image_loader(test.samples, eval_transform(pre), pre.resize_size, hp.batch_size, hp.num_workers)
            served = {name: precision.prepare(copy.deepcopy(network), name, torch.device("cpu"), pre.image_size)
                      for name in precision.CPU_MODES}
            timed(network, served, [next(iter(loader))])  # warm-up: first forwards
            before, old = 0.0, {}
            for name, module in served.items():  # one pass per mode, as before
                seconds, found = timed(network, {name: module}, loader)
                before, old = before + seconds, {**old, **found}
            now, new = timed(network, served, loader)
            rows.append({"backbone": backbone, "images": len(test.samples), "modes": len(served),
                         "per_mode_seconds": round(before, 2), "one_pass_seconds": round(now, 2),
                         "ratio": round(now / before, 3), "same_numbers": old == new})
            print(rows[-1], flush=True)
    write(args.name, rows, {"backbone": "backbone", "images": "test images", "modes": "CPU modes",
                            "per_mode_seconds": "one pass per mode, s", "one_pass_seconds": "one pass, s",
                            "ratio": "one pass / per mode", "same_numbers": "same agreement figures"},
          notes="Both run precision.check on the same loader (the training job's batch size and 2 loader workers); "
                "the frozen bf16 graphs are built before timing.", results=args.results)


if __name__ == "__main__":
    main()
