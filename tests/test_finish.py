"""finish.Result: what metrics.json and model.json hold, built once from what the run found."""
from image_classifier.training import evaluation
from image_classifier.training.finish import Result

BASE = dict(best_epoch=2, epochs_run=3, valid_loss=0.5, valid_accuracy=0.8, skipped_files=1, undecodable_images=0,
            history=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
FIGURES = {"images": 10, "top1_accuracy": 0.8, "confident_mistakes": [{"file": "a.jpg"}], "per_class": []}


def test_a_tested_run_reports_everything_and_its_manifest_the_headline():
    result = Result(**BASE, evaluation={"valid": FIGURES, "test": FIGURES},
                    test=dict(test_loss=0.6, test_accuracy=0.7, test_images=10), serving={"cpu-bf16": {}}, audit=None)
    found = result.metrics()
    assert list(found) == [*BASE, "evaluation", "test_loss", "test_accuracy", "test_images", "serving", "audit"]
    assert found["audit"] is None and found["evaluation"]["test"] is FIGURES  # audit=off: null, as before
    manifest = result.manifest()
    assert list(manifest) == [*BASE, "evaluation", "test_loss", "test_accuracy", "test_images", "serving"]
    assert set(manifest["evaluation"]["test"]) == {"images", "top1_accuracy"} <= set(evaluation.HEADLINE)


def test_a_run_without_test_or_serving_leaves_their_keys_out():
    found = Result(**BASE, evaluation={"valid": FIGURES}, audit={"exact_duplicates": 0}).metrics()
    assert list(found) == [*BASE, "evaluation", "audit"]


def test_a_stopped_run_saves_the_best_epochs_figures_only():
    result = Result(**{**BASE, "valid_loss": None, "valid_accuracy": None})
    assert result.metrics() == result.manifest() == {**BASE, "valid_loss": None, "valid_accuracy": None}
