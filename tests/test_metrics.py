import re

from image_classifier import metrics


def test_epoch_and_test_lines_match_every_metric_definition():
    text = "\n".join([
        metrics.epoch_line(1, 3, 1.25, 0.5, 0.75, 0.625, 12.5, 99.9, 1e-3),
        metrics.epoch_line(2, 3, 0.5, 0.8, 0.4, 0.875, 11.0, 120.0, 5e-4, 0.35, 0.9),  # with ema-decay
        metrics.test_line(0.3, 0.9),
        *(metrics.evaluation_line(channel, {"top5_accuracy": 0.99, "top1_accuracy_ci95": [0.8, 0.95],
                                            "macro_f1": 0.88, "expected_calibration_error": 0.05, "images": 250})
          for channel in ("valid", "test")),
    ])
    found = metrics.parse(text)
    assert found["train:loss"] == [1.25, 0.5]
    assert found["valid:accuracy"] == [0.625, 0.875]
    assert found["valid:ema_accuracy"] == [0.9] and found["valid:ema_loss"] == [0.35]
    assert found["epoch:seconds"] == [12.5, 11.0]
    assert found["train:images_per_second"] == [99.9, 120.0]
    assert found["test:accuracy"] == [0.9] and found["test:loss"] == [0.3]
    assert found["test:accuracy_ci95_low"] == [0.8] and found["valid:calibration_error"] == [0.05]
    assert all(found[d["Name"]] for d in metrics.METRIC_DEFINITIONS)


def test_regexes_do_not_read_each_others_values():
    line = metrics.epoch_line(1, 1, 9.0, 0.1, 8.0, 0.2, 1.0, 1.0, 0.1, 7.0, 0.3)
    for d in metrics.METRIC_DEFINITIONS:
        assert len(re.findall(d["Regex"], line)) <= 1
    found = metrics.parse(line)
    assert found["valid:accuracy"] == [0.2] and found["valid:loss"] == [8.0]  # not the averaged weights' figures
    assert found["valid:ema_accuracy"] == [0.3] and found["train:accuracy"] == [0.1]


def test_objective_is_validation_accuracy_and_is_defined():
    names = [d["Name"] for d in metrics.METRIC_DEFINITIONS]
    assert metrics.OBJECTIVE_METRIC in names and "test" not in metrics.OBJECTIVE_METRIC
