"""checkpoint.py: a resumed job gets back what it saved, and only its own checkpoint."""
import json

import pytest
import torch

from image_classifier.training import checkpoint
from image_classifier.errors import TrainingError

HP = {"backbone": "resnet18", "trainable": "head", "image-size": 64, "batch-size": 8, "optimizer": "adamw",
      "seed": 1, "lr": 0.01}
FOLDERS = ["001.A", "002.B"]


def state(hp=HP, folders=FOLDERS) -> dict:
    return {"epoch": 3, "model": {"w": torch.arange(4.0)}, "hyperparameters": json.dumps(hp),
            "class_folders": json.dumps(folders)}


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    assert checkpoint.load(tmp_path, HP, FOLDERS) is None and checkpoint.load_best(tmp_path) is None


def test_a_saved_state_comes_back(tmp_path):
    checkpoint.save(tmp_path / "ckpt", state())
    loaded = checkpoint.load(tmp_path / "ckpt", {**HP, "lr": 0.001}, FOLDERS)  # lr may change on resume
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    checkpoint.save_best(tmp_path / "ckpt", {"w": torch.ones(2)})
    assert torch.equal(checkpoint.load_best(tmp_path / "ckpt")["w"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [checkpoint.BEST_FILE, checkpoint.STATE_FILE,
                                                                    checkpoint.WRITTEN_FILE]


@pytest.mark.parametrize("name", checkpoint.MUST_MATCH)
def test_another_configurations_checkpoint_is_refused(tmp_path, name):
    checkpoint.save(tmp_path, state())
    with pytest.raises(TrainingError, match=f"belongs to another configuration \\({name} "):
        checkpoint.load(tmp_path, {**HP, name: "other"}, FOLDERS)


def test_other_classes_or_a_damaged_file_are_refused(tmp_path):
    checkpoint.save(tmp_path, state())
    with pytest.raises(TrainingError, match="was made for other classes"):
        checkpoint.load(tmp_path, HP, [*FOLDERS, "003.C"])
    (tmp_path / checkpoint.STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(TrainingError, match="cannot be read .*delete it or use another checkpoint directory"):
        checkpoint.load(tmp_path, HP, FOLDERS)


def test_a_checkpoint_holds_only_what_weights_only_loads(tmp_path):
    checkpoint.save(tmp_path, {**state(), "code": print})  # a function is not data
    with pytest.raises(TrainingError, match="cannot be read"):
        checkpoint.load(tmp_path, HP, FOLDERS)


def test_a_trial_prunes_only_other_trials_too_old_to_resume(tmp_path):
    import time
    for name, age in (("old", 7200), ("new", 60), ("mine", 7200)):
        (tmp_path / name).mkdir()
        (tmp_path / name / checkpoint.WRITTEN_FILE).write_text(json.dumps({"unix_seconds": time.time() - age}))
    (tmp_path / "other").mkdir()  # no WRITTEN_FILE: not a trial's
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / checkpoint.WRITTEN_FILE).write_text("{")
    assert checkpoint.prune_trials(tmp_path, "mine", 3600) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "mine", "new", "other"]
    checkpoint.remove_trial(tmp_path / "mine")
    assert not (tmp_path / "mine").exists()
    assert checkpoint.prune_trials(tmp_path / "absent", "mine", 1) == []


def test_every_save_says_when(tmp_path):
    import time
    checkpoint.save(tmp_path, {"x": torch.zeros(1)})
    written = json.loads((tmp_path / checkpoint.WRITTEN_FILE).read_text())["unix_seconds"]
    assert abs(written - time.time()) < 60


def test_a_checkpoint_records_the_crop_it_trains_at_so_an_older_images_default_resumes(tmp_path):
    """image-size 0 (the backbone's own size) and 224, an older image's default, are one job for
    a 224-pixel backbone; another crop is another job."""
    from types import SimpleNamespace

    from image_classifier import hyperparameters
    from image_classifier.training.state import RunState
    hp = hyperparameters.parse({"backbone": "efficientnet_lite0"})
    assert hp.image_size == 0
    now = RunState.identity(SimpleNamespace(hp=hp, image_size=224))
    assert now["image-size"] == 224 and now["backbone"] == "efficientnet_lite0"
    checkpoint.save(tmp_path, state(hp={**hyperparameters.as_dict(hp), "image-size": 224}))  # as the old image saved it
    assert checkpoint.load(tmp_path, now, FOLDERS)["epoch"] == 3
    with pytest.raises(TrainingError, match=r"image-size 224 -> 260"):
        checkpoint.load(tmp_path, RunState.identity(SimpleNamespace(hp=hp, image_size=260)), FOLDERS)
