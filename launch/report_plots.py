"""The report's figures, as PNG bytes (matplotlib, no display needed)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .profile_summary import PHASES, Profile

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
    averaged = "ema_valid_acc" in history[0]  # ema-decay: the average of the weights, validated too
    for ax, kind in ((loss, "loss"), (acc, "acc")):
        lines = [(f"train_{kind}", "train", "tab:blue"), (f"valid_{kind}", "validation", "tab:orange")]
        lines += [(f"ema_valid_{kind}", "validation, EMA weights", "tab:green")] if averaged else []
        for key, label, color in lines:
            ax.plot(epochs, [h[key] for h in history], "o-", color=color, label=label)
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


def confusion_matrix(evaluation: dict) -> bytes:
    """Rows: true class, columns: predicted; each row as shares of its images (counts written in)."""
    matrix = np.array(evaluation["confusion_matrix"], dtype=float)
    classes = evaluation["classes"]
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    n = len(classes)
    size = min(12, 3 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class's images")
    if n <= 30:  # beyond that the counts are unreadable; the colours still say it
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, int(count), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    ticks = range(n) if n <= 60 else range(0, n, max(1, n // 30))
    ax.set_xticks(list(ticks), [classes[t] for t in ticks], rotation=90, fontsize=7)
    ax.set_yticks(list(ticks), [classes[t] for t in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return _png(fig)


def per_class(evaluation: dict) -> bytes:
    """Precision, recall and F1 of each class, worst F1 first."""
    rows = sorted(evaluation["per_class"], key=lambda r: r["f1"])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.35 * len(rows)), 3.8))
    bars = ((-0.27, "precision", "tab:blue"), (0, "recall", "tab:orange"), (0.27, "f1", "tab:green"))
    for offset, key, color in bars:
        ax.bar(x + offset, [r[key] for r in rows], width=0.27, color=color, label=key)
    ax.set_xticks(x, [r["class"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title("Per class (worst F1 first)")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def reliability(evaluation: dict) -> bytes:
    """Accuracy against confidence per confidence bin: on the diagonal, a calibrated model."""
    curve = evaluation["reliability"]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
    ax.bar([(b["low"] + b["high"]) / 2 for b in curve], [b["accuracy"] for b in curve],
           width=[b["high"] - b["low"] for b in curve], edgecolor="tab:blue", alpha=0.6, label="accuracy")
    ax.plot([b["confidence"] for b in curve], [b["accuracy"] for b in curve], "o", color="tab:red", markersize=3,
            label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {evaluation['expected_calibration_error']:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)
