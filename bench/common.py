"""What every benchmark shares: the machine it ran on, data subsets of imagewoof10, and writing
results as JSON and a markdown table (bench/results/NAME.json, NAME.md)."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "imagewoof10"
RESULTS = ROOT / "bench" / "results"
# ResNets have no ImageNet weights offline (../shared/NOTES.md): random weights, same compute.
OFFLINE_WEIGHTS = {"efficientnet_lite0": "imagenet"}


def machine() -> dict:
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "bf16_cpu": "avx512_bf16" in flags or "amx_bf16" in flags,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def subset(data: Path, out: Path, per_class: dict[str, int]) -> Path:
    """The first N images of each class of each split, as symlinks (the same files every run), read
    once so that no contender pays for a cold page cache."""
    for split, n in per_class.items():
        for folder in sorted(p for p in (Path(data) / split).iterdir() if p.is_dir()):
            target = out / split / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(folder.iterdir())[:n]:
                if not (target / path.name).exists():
                    (target / path.name).symlink_to(path.resolve())
                path.read_bytes()
    return out


def run_train(base: Path, channels: dict[str, Path], hyperparameters: dict) -> str:
    """The image's real `train`, natively, in a fresh /opt/ml tree BASE; its stdout (metric lines)."""
    import subprocess
    from launch.local import programs
    programs.make_tree(base, channels, hyperparameters)
    result = subprocess.run(programs.program("train"), env=programs.program_env(base), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"train failed in {base}: {result.stderr[-2000:]}")
    return result.stdout


def write(name: str, rows: list[dict], columns: dict[str, str], notes: str = "", results: Path = RESULTS) -> Path:
    """RESULTS/NAME.json (rows and machine) and RESULTS/NAME.md (a table of COLUMNS: key -> header)."""
    results.mkdir(parents=True, exist_ok=True)
    info = machine()
    (results / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    header = "| " + " | ".join(columns.values()) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(_cell(row.get(k)) for k in columns) + " |\n" for row in rows)
    where = f"{info['cpu']}, {info['cores']} cores" + (f", {info['gpu']}" if info["gpu"] else ", no GPU")
    md = f"Measured {info['date']} on {where}; torch {info['torch']}.\n\n{header}{body}"
    if notes:
        md += f"\n{notes}\n"
    (results / f"{name}.md").write_text(md)
    print(md)
    return results / f"{name}.md"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)
