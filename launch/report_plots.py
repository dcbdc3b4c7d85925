"""The report's figures, as PNG bytes (matplotlib, no display needed)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .profile_summary import PHASES, Profile  # noqa: E402

COLORS = {"TRAIN": "tab:blue", "EVAL": "tab:orange", "data_wait": "tab:red", "forward_backward": "tab:blue",
          "optimizer": "tab:green"}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def loss_curves(losses: dict, marks: dict[str, int]) -> bytes:
    """Training and validation loss over global steps (smdebug trial); a dashed line where a rule fired first."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, series in losses.items():
        for mode, (steps, values) in series.items():
            label = f"{'train' if mode == 'TRAIN' else 'validation'} ({name})"
            style = "-" if mode == "TRAIN" else "o"
            ax.plot(steps, values, style, color=COLORS.get(mode), label=label, markersize=4, linewidth=1)
    for i, (rule, step) in enumerate(sorted(marks.items(), key=lambda item: item[1])):
        ax.axvline(step, color="tab:red", linestyle="--", linewidth=0.8)
        ax.annotate(rule, (step, 1 - 0.07 * (i % 6)), xycoords=("data", "axes fraction"), fontsize=7,
                    color="tab:red", rotation=0, ha="left", va="top")
    finite = [v for series in losses.values() for _, values in series.values() for v in values if np.isfinite(v)]
    if finite and max(finite) / max(min(finite), 1e-12) > 1e3:
        ax.set_yscale("log")  # an exploded loss would flatten everything else
    ax.set_xlabel("step (training and validation steps, in order)")
    ax.set_ylabel("loss")
    ax.set_title("Loss (SageMaker Debugger tensors)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def epoch_curves(history: list[dict]) -> bytes:
    """Per-epoch loss and accuracy from metrics.json."""
    epochs = [h["epoch"] for h in history]
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label, color in (("train_loss", "train", "tab:blue"), ("valid_loss", "validation", "tab:orange")):
        loss.plot(epochs, [h[key] for h in history], "o-", color=color, label=label)
    for key, label, color in (("train_acc", "train", "tab:blue"), ("valid_acc", "validation", "tab:orange")):
        acc.plot(epochs, [h[key] for h in history], "o-", color=color, label=label)
    loss.set_title("Loss per epoch")
    acc.set_title("Accuracy per epoch")
    for ax in (loss, acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def utilization(profile: Profile) -> bytes:
    """CPU (mean and busiest core), memory and GPU over the job; the dotted line: first step done."""
    samples = profile.system
    t0 = samples[0]["time"]
    t = np.array([s["time"] - t0 for s in samples])
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(t, [Profile.cpu_mean(s) for s in samples], color="tab:blue", label="CPU (mean of cores)")
    ax.plot(t, [max(s.get("cpu_percent") or [0]) for s in samples], color="tab:blue", alpha=0.3,
            label="CPU (busiest core)")
    ax.plot(t, [s.get("memory_percent", 0) for s in samples], color="tab:purple", label="memory")
    for key, label, color in (("gpu_percent", "GPU", "tab:green"), ("gpu_memory_percent", "GPU memory", "tab:olive")):
        points = [(ti, s[key]) for ti, s in zip(t, samples) if key in s]
        if points:
            ax.plot(*zip(*points), color=color, label=label)
    if profile.steps and "time" in profile.steps[0]:
        ax.axvline(profile.steps[0]["time"] - t0, color="gray", linestyle=":", linewidth=1)
    ax.set_ylim(0, 105)
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("%")
    ax.set_title("Utilization")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def step_breakdown(profile: Profile, bins: int = 200) -> bytes:
    """Each step's time split into its phases (averaged over bins of steps when there are many)."""
    phases = {p: profile.phase(p) for p in PHASES}
    n = len(profile.steps)
    groups = np.array_split(np.arange(n), min(bins, n))
    x = np.arange(len(groups))
    fig, (bars, pie) = plt.subplots(1, 2, figsize=(10, 3.5), gridspec_kw={"width_ratios": [3, 1]})
    bottom = np.zeros(len(groups))
    for phase, values in phases.items():
        heights = np.array([values[g].mean() for g in groups])
        bars.bar(x, heights, bottom=bottom, width=1.0, color=COLORS[phase], label=phase.replace("_", " "))
        bottom += heights
    bars.set_xlabel("training step" if len(groups) == n else f"training steps (mean of {n // len(groups)}+ each)")
    bars.set_ylabel("seconds")
    bars.set_title("Step time by phase")
    bars.legend(fontsize=8)
    totals = profile.totals()
    pie.pie(list(totals.values()), labels=[p.replace("_", " ") for p in totals], colors=[COLORS[p] for p in totals],
            autopct="%1.0f%%", textprops={"fontsize": 8})
    pie.set_title("All steps")
    return _png(fig)
