"""evaluation.py: the figures a held-out channel gives, checked against values worked out by hand."""
import json

import numpy as np
import pytest

from image_classifier import metrics
from image_classifier.training import evaluation


def test_wilson_interval_matches_the_textbook_values():
    # Wilson (1927); e.g. 81 of 263 -> [0.2553, 0.3662] (Newcombe 1998, Table I, method 3).
    low, high = evaluation.wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert evaluation.wilson(0, 10)[0] == 0 and evaluation.wilson(10, 10)[1] == pytest.approx(1)
    low, high = evaluation.wilson(10, 10)
    assert round(low, 4) == 0.7225  # not the normal approximation's zero-width [1, 1]
    assert evaluation.wilson(0, 0) == (0.0, 1.0)


def test_summary_of_a_small_hand_checked_case():
    classes = ["a", "b", "c"]
    probabilities = np.array([[0.8, 0.1, 0.1],   # a -> a
                              [0.6, 0.3, 0.1],   # b -> a (a confident mistake)
                              [0.2, 0.7, 0.1],   # b -> b
                              [0.1, 0.45, 0.45],  # c -> b (tie broken to the first: b)
                              [0.1, 0.1, 0.8]])  # c -> c
    labels = np.array([0, 1, 1, 2, 2])
    s = evaluation.summarize(probabilities, labels, classes, [f"f{i}.jpg" for i in range(5)])
    assert s["images"] == 5 and s["top1_accuracy"] == 0.6 and s["top_k"] == 3 and s["top5_accuracy"] == 1.0
    assert s["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    a, b, c = s["per_class"]
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (0.5, 1.0, 0.6667, 1)
    assert (b["precision"], b["recall"]) == (0.5, 0.5) and (c["precision"], c["recall"]) == (1.0, 0.5)
    assert s["macro_f1"] == round((0.6667 + 0.5 + 0.6667) / 3, 4)
    assert [m["file"] for m in s["confident_mistakes"]] == ["f1.jpg", "f3.jpg"]
    assert s["confident_mistakes"][0] == {"file": "f1.jpg", "true": "b", "predicted": "a", "probability": 0.6}
    # Confidences 0.8 (right), 0.6 (wrong), 0.7 (right), 0.45 (wrong), 0.8 (right) in 15 bins:
    # |1-0.8|*2/5 + |0-0.6|/5 + |1-0.7|/5 + |0-0.45|/5
    assert s["expected_calibration_error"] == pytest.approx(0.08 + 0.12 + 0.06 + 0.09, abs=1e-4)
    assert sum(b["images"] for b in s["reliability"]) == 5
    assert s["top1_accuracy_ci95"] == [round(x, 4) for x in evaluation.wilson(3, 5)]


def test_top5_counts_the_true_class_among_the_five_most_probable():
    probabilities = np.tile(np.linspace(0.2, 0.01, 10), (2, 1))  # class 0 most probable, class 9 least
    s = evaluation.summarize(probabilities, np.array([4, 5]), [str(i) for i in range(10)], ["x", "y"])
    assert s["top1_accuracy"] == 0 and s["top5_accuracy"] == 0.5 and s["top_k"] == 5


def test_written_files_and_the_metric_line(tmp_path):
    s = evaluation.summarize(np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([0, 0]), ["a", "b"], ["1.jpg", "2.jpg"])
    evaluation.write(tmp_path, "test", s)
    assert json.loads((tmp_path / "test.json").read_text()) == s
    assert (tmp_path / "test_per_class.tsv").read_text().splitlines()[0] == "class\tprecision\trecall\tf1\tsupport"
    assert (tmp_path / "test_mistakes.tsv").read_text().splitlines()[1] == "2.jpg\ta\tb\t0.7"
    found = metrics.parse(metrics.evaluation_line("test", s))
    low, high = s["top1_accuracy_ci95"]
    assert found["test:top5_accuracy"] == [1.0] and found["test:accuracy_ci95_low"] == [round(low, 4)]
    assert found["test:accuracy_ci95_high"] == [round(high, 4)] and found["test:calibration_error"] == [
        s["expected_calibration_error"]]
    assert found["valid:macro_f1"] == [] and found["test:accuracy"] == []  # no line reads another's value
