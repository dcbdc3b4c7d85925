"""The real `train` with the whole recipe on (TrivialAugment, random erasing, label smoothing,
mixup and cutmix, the average of the weights, layer-wise decay), resumed from its checkpoint;
and mixing refused before the backbone loads where the head trains on cached features."""
import json

import torch

from conftest import FAST_HP, failure_reason, read_json, run_train
from image_classifier import hyperparameters, metrics
from image_classifier.training import checkpoint
from launch.local import programs

RECIPE = {**FAST_HP, "trainable": "last-stage", "augment": "trivialaugment", "random-erasing": 0.25,
          "label-smoothing": 0.1, "mixup": 0.4, "cutmix": 1.0, "ema-decay": 0.9, "layer-decay": 0.7}


def test_the_whole_recipe_trains_keeps_the_better_weights_and_resumes_with_its_average(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, RECIPE)
    first = run_train(base)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "mixing training batches: mixup 0.4, cutmix 1" in first.stderr
    lines = [line for line in first.stdout.splitlines() if line.startswith("epoch=")]
    assert len(lines) == 2 and all(" ema_acc=" in line and " ema_loss=" in line for line in lines)
    found_metrics = metrics.parse(first.stdout)  # every regex SageMaker is given reads this real output
    assert all(found_metrics[d["Name"]] for d in metrics.METRIC_DEFINITIONS)
    assert len(found_metrics["valid:ema_accuracy"]) == 2 and len(found_metrics["valid:accuracy"]) == 3  # + selected

    found = read_json(base / "output" / "data" / "metrics.json")
    kept = [max(row["valid_acc"], row["ema_valid_acc"]) for row in found["history"]]
    assert [row["kept"] for row in found["history"]] == \
        ["ema" if row["ema_valid_acc"] > row["valid_acc"] else "model" for row in found["history"]]
    assert found["valid_accuracy"] == max(kept)  # the saved model's figure: the better of the two weights
    assert f"selected epoch={found['best_epoch']} " in first.stdout

    saved = torch.load(base / "checkpoints" / checkpoint.STATE_FILE, weights_only=True)
    assert set(saved["ema"]) == set(saved["model"])  # trainable=last-stage: the whole model is averaged
    changed = [k for k in saved["ema"] if saved["ema"][k].is_floating_point()
               and not torch.equal(saved["ema"][k], saved["model"][k])]
    assert changed  # the average lags the trained weights

    # A longer run resumes from the checkpoint, its average included (ema-decay must match).
    config = base / "input" / "config" / "hyperparameters.json"
    config.write_text(json.dumps(hyperparameters.to_sagemaker({**RECIPE, "epochs": 3})))
    second = run_train(base)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming from" in second.stderr and "epoch 3, step 0" in second.stderr
    assert [line.split()[0] for line in second.stdout.splitlines() if line.startswith("epoch=")] == ["epoch=3/3"]

    config.write_text(json.dumps(hyperparameters.to_sagemaker({**RECIPE, "epochs": 4, "ema-decay": 0.99})))
    third = run_train(base)
    assert third.returncode != 0
    assert "belongs to another configuration (ema-decay 0.9 -> 0.99)" in failure_reason(base)


def test_mixing_cached_features_is_refused_before_the_backbone_loads(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "cutmix": 1.0})  # trainable=head, cached
    result = run_train(base)
    assert result.returncode != 0
    assert failure_reason(base).startswith("cutmix=1 mixes images, but trainable=head with cache-features=true")
    assert "ImageNet weights" not in result.stderr  # refused before any weights were read


def test_the_average_of_a_head_on_cached_features_is_saved_as_a_whole_model(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "ema-decay": 0.9, "label-smoothing": 0.1})
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mixup and cutmix off" not in result.stderr  # nothing to say: cached features never mix
    saved = torch.load(base / "checkpoints" / checkpoint.STATE_FILE, weights_only=True)
    assert set(saved["ema"]) < set(saved["model"]) and all(k.startswith("classifier.") for k in saved["ema"])
    best = torch.load(base / "checkpoints" / checkpoint.BEST_FILE, weights_only=True)
    assert set(best) == set(saved["model"])  # the whole network, the average in the head's place where kept
    found = read_json(base / "output" / "data" / "metrics.json")
    row = next(r for r in found["history"] if r["epoch"] == found["best_epoch"])
    assert found["valid_accuracy"] == (row["ema_valid_acc"] if row["kept"] == "ema" else row["valid_acc"])
