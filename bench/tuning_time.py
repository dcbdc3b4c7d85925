"""Tuning wall time: `python -m launch.tune --local` for N trials of the demo's configuration
(demo/demo.py: EfficientNet-Lite0, frozen backbone, its search space and data slice), with the
trials sharing cached backbone features (the default) against the same tuning without them
(`--hp cache-features=false`), in the same run.

    python bench/tuning_time.py [--trials 6] [--train-per-class 100] [--valid-per-class 50]

Random search with a fixed seed and no early stopping, so both tunings train the same trials.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import DATA, RESULTS, subset, write


def _demo_config() -> str:
    """The demo's tuning configuration, one source of truth (demo/ is a script, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo", common.ROOT / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.CONFIG


CONFIG = _demo_config()

CONTENDERS = {"shared cached features": [], "no cached features": ["--hp", "cache-features=false"]}


def tune(name: str, extra: list[str], trials: int, data: Path, work: Path) -> dict:
    (work / "config.toml").write_text(CONFIG.format(trials=trials))
    env = {**os.environ, "IC_CONFIG": str(work / "config.toml"), "PYTHONPATH": str(common.ROOT)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "launch.tune", "--local", "--data", str(data), "--strategy",
                             "Random", "--early-stopping", "Off", "--local-dir", str(work / "jobs"),
                             "--results", str(work / "results"), *extra],
                            cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name}: tuning failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    [analytics] = (work / "results").glob("*/analytics.csv")
    rows = list(csv.DictReader(analytics.open()))
    trial_seconds = [float(r["TrainingElapsedTimeSeconds"]) for r in rows]
    return {"contender": name, "trials": len(rows), "wall_seconds": seconds,
            "first_trial_seconds": trial_seconds[0], "median_trial_seconds": sorted(trial_seconds)[len(rows) // 2],
            "best_valid_accuracy": max(float(r["FinalObjectiveValue"]) for r in rows),
            "trial_seconds": trial_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--train-per-class", type=int, default=100, help="as the demo")
    parser.add_argument("--valid-per-class", type=int, default=50, help="as the demo")
    parser.add_argument("--name", default="tuning_time", help="results file name")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where NAME.json and NAME.md go")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(args.data, Path(tmp) / "data", {"train": args.train_per_class, "valid": args.valid_per_class})
        for name, extra in CONTENDERS.items():
            print(f"== {name}", flush=True)
            work = Path(tmp) / name.replace(" ", "-")
            work.mkdir()
            rows.append(tune(name, extra, args.trials, data, work))
            print(rows[-1], flush=True)
    for row in rows:
        row["speedup"] = rows[-1]["wall_seconds"] / row["wall_seconds"]
    write(args.name, rows, {
        "contender": "tuning", "trials": "trials", "wall_seconds": "wall s", "first_trial_seconds": "first trial s",
        "median_trial_seconds": "median trial s", "best_valid_accuracy": "best valid acc", "speedup": "speedup"},
        notes=f"`launch.tune --local`, demo configuration, {args.train_per_class} train and {args.valid_per_class} "
              "valid images per class, 2 trials at a time (each with its share of the cores), Random search "
              "(seed 17), no early stopping. Wall time from start to the best job printed.", results=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
