"""What a tuning run leaves for people to read: the analytics table (CSV) and a plot (PNG) of the
objective against each tuned hyperparameter. Used for SageMaker tuning jobs and local ones."""
from __future__ import annotations

from pathlib import Path

from image_classifier.search_space import Categorical, Integer


def normalize(value, rng):
    """A tuned value in its search-space type (SageMaker's analytics turn 32 into 32.0)."""
    if value is None or value != value:  # missing or NaN
        return None
    if isinstance(rng, Categorical):
        for choice in rng.values:
            try:
                if str(choice) == str(value) or float(choice) == float(value):
                    return choice
            except (TypeError, ValueError):
                continue
        return value
    return int(round(float(value))) if isinstance(rng, Integer) else float(value)


def write(rows: list[dict], space: dict, objective: str, out_dir: Path) -> tuple[Path, Path]:
    """rows: one per training job with the tuned hyperparameters, 'TrainingJobName',
    'TrainingJobStatus' and 'FinalObjectiveValue' (None when the job gave none)."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{**r, **{n: normalize(r.get(n), rng) for n, rng in space.items()}} for r in rows]
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "analytics.csv"
    columns = ["TrainingJobName", "TrainingJobStatus", "FinalObjectiveValue", *space,
               *sorted({k for r in rows for k in r} - set(space) - {"TrainingJobName", "TrainingJobStatus",
                                                                   "FinalObjectiveValue"})]
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: -(r.get("FinalObjectiveValue") or float("-inf"))))

    scored = [r for r in rows if r.get("FinalObjectiveValue") is not None]
    best = max(scored, key=lambda r: r["FinalObjectiveValue"]) if scored else None
    fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.6), squeeze=False)
    for ax, (name, rng) in zip(axes[0], space.items()):
        xs = [r[name] for r in scored]
        if isinstance(rng, Categorical):
            labels = [str(v) for v in rng.values]
            xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif getattr(rng, "scaling", "") == "Logarithmic":
            ax.set_xscale("log")
        ax.scatter(xs, [r["FinalObjectiveValue"] for r in scored], alpha=0.8)
        if best is not None:
            bx = xs[scored.index(best)]
            ax.scatter([bx], [best["FinalObjectiveValue"]], marker="*", s=220, color="crimson", label="best")
            ax.legend(loc="best", fontsize="small")
        ax.set_xlabel(name)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{objective} by hyperparameter ({len(scored)} of {len(rows)} jobs scored)")
    fig.tight_layout()
    plot = out_dir / "objective.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    return table, plot
