"""What a held-out channel says about a model, from its probabilities: top-1 and top-5 accuracy
(top-1 with a 95% Wilson interval), per-class precision, recall and F1, the confusion matrix,
calibration (expected calibration error over equal-width confidence bins, and the reliability
curve) and the most confident mistakes. Plain numpy: the numbers are few and exact.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
BINS = 15  # confidence bins for calibration, as in Guo et al. 2017 ("On Calibration of Modern Neural Networks")
MISTAKES = 20
HEADLINE = ("images", "top1_accuracy", "top1_accuracy_ci95", "top5_accuracy", "top_k", "macro_f1",
            "expected_calibration_error")  # what model.json keeps


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: unlike the normal approximation it
    stays inside [0, 1] and is honest for small n and for accuracies near 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """rows: true class, columns: predicted class."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    true_positive = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    rows = []
    for i, name in enumerate(classes):
        precision = true_positive[i] / predicted[i] if predicted[i] else 0.0
        recall = true_positive[i] / actual[i] if actual[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                     "support": int(actual[i])})
    return rows


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> tuple[float, list[dict]]:
    """Expected calibration error (the support-weighted gap between confidence and accuracy per bin)
    and the reliability curve (one point per non-empty bin)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error, curve = 0.0, []
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        accuracy, mean_confidence = correct[inside].mean(), confidence[inside].mean()
        error += inside.mean() * abs(accuracy - mean_confidence)
        curve.append({"low": round(float(edges[b]), 4), "high": round(float(edges[b + 1]), 4),
                      "confidence": round(float(mean_confidence), 4), "accuracy": round(float(accuracy), 4),
                      "images": int(inside.sum())})
    return round(float(error), 4), curve


def summarize(probabilities: np.ndarray, labels: np.ndarray, classes: list[str], files: list[str],
              mistakes: int = MISTAKES) -> dict:
    """probabilities: (n, classes) softmax rows; labels: (n,) true indices; files: n paths."""
    n, num_classes = probabilities.shape
    predicted = probabilities.argmax(1)
    correct = predicted == labels
    k = min(5, num_classes)
    top5 = (np.argsort(-probabilities, 1)[:, :k] == labels[:, None]).any(1)
    low, high = wilson(int(correct.sum()), n)
    matrix = confusion(labels, predicted, num_classes)
    confidence = probabilities.max(1)
    ece, curve = calibration(confidence, correct)
    classes_table = per_class(matrix, classes)
    wrong = np.flatnonzero(~correct)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:mistakes]
    return {
        "images": int(n),
        "top1_accuracy": round(float(correct.mean()) if n else 0.0, 4),
        "top1_accuracy_ci95": [round(low, 4), round(high, 4)],
        "top5_accuracy": round(float(top5.mean()) if n else 0.0, 4), "top_k": k,
        "expected_calibration_error": ece,
        "per_class": classes_table,
        "macro_f1": round(float(np.mean([c["f1"] for c in classes_table])), 4),
        "confusion_matrix": matrix.tolist(), "classes": list(classes),
        "reliability": curve,
        "confident_mistakes": [{"file": files[i], "true": classes[labels[i]], "predicted": classes[predicted[i]],
                                "probability": round(float(confidence[i]), 4)} for i in worst],
    }


def write(directory: Path, name: str, summary: dict) -> None:
    """output/data/evaluation/NAME.json, plus the per-class table and the mistakes as TSV."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    for suffix, rows in (("per_class", summary["per_class"]), ("mistakes", summary["confident_mistakes"])):
        with open(directory / f"{name}_{suffix}.tsv", "w", newline="") as f:
            fields = list(rows[0]) if rows else ["none"]
            writer = csv.DictWriter(f, fields, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
