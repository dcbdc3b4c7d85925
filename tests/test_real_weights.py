"""EfficientNet-Lite0 with its real ImageNet weights, fine-tuned briefly by the real `train`
on a small slice of imagewoof10 (real dog photos), clearly beats chance."""
import os

import pytest

from conftest import IMAGEWOOF, read_json, run_train
from image_classifier import local, metrics

pytestmark = pytest.mark.slow


def imagewoof_slice(root, per_class: dict[str, int]) -> dict:
    """The first N files of each class, sorted by name (symlinks)."""
    channels = {}
    for split, n in per_class.items():
        for folder in sorted((IMAGEWOOF / split).iterdir()):
            target = root / split / folder.name
            target.mkdir(parents=True)
            for f in sorted(folder.iterdir())[:n]:
                os.symlink(f, target / f.name)
        channels[split] = root / split
    return channels


def test_efficientnet_lite0_fine_tuned_on_imagewoof_beats_chance(tmp_path, imagewoof):
    channels = imagewoof_slice(tmp_path / "data", {"train": 20, "valid": 5, "test": 10})
    base = local.make_tree(tmp_path / "ml", channels, {
        "backbone": "efficientnet_lite0", "epochs": 2, "batch-size": 25, "lr": 0.005, "num-workers": 2})
    result = run_train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    [test_acc] = metrics.parse(result.stdout)["test:accuracy"]
    print(f"imagewoof10 slice: test accuracy {test_acc:.3f} over 100 images (chance 0.1)")
    assert test_acc > 0.5
    assert read_json(base / "model" / "model.json")["metrics"]["test_images"] == 100
