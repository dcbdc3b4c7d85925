"""The real `train` program on generated data under a temporary /opt/ml tree."""
import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import CONTAINER, FAST_HP, program_env, read_json, run_train, failure_reason
from image_classifier import local, metrics
from imagegen import make_imagefolder

pytestmark = pytest.mark.slow


def test_training_writes_model_metrics_and_success(trained):
    model_dir = trained / "model"
    manifest = read_json(model_dir / "model.json")
    assert manifest["class_names"] == ["Red_box", "Green_disc", "Blue_box"]
    assert manifest["backbone"] == "efficientnet_lite0" and manifest["hyperparameters"]["epochs"] == 2
    assert {"valid_accuracy", "test_accuracy", "best_epoch"} <= set(manifest["metrics"])
    assert torch.load(model_dir / "model.pt", weights_only=True)
    assert (trained / "output" / "success").exists() and not (trained / "output" / "failure").exists()
    assert read_json(trained / "output" / "data" / "metrics.json")["epochs_run"] == 2
    assert (trained / "checkpoints" / "checkpoint.pt").exists()


def test_printed_metrics_match_the_regexes_sagemaker_uses(tmp_path, tiny_data):
    base = local.make_tree(tmp_path, tiny_data, {**FAST_HP, "log-interval": 2})
    result = run_train(base)
    assert result.returncode == 0, result.stderr
    found = metrics.parse(result.stdout)
    assert all(len(found[n]) == 2 for n in ("train:loss", "train:accuracy", "valid:loss", "valid:accuracy",
                                              "epoch:seconds", "train:images_per_second"))
    assert len(found["test:accuracy"]) == 1 and 0 <= found["test:accuracy"][0] <= 1
    assert "epoch 1 step 2/" in result.stdout  # progress


def break_valid_classes(base, data):
    shutil.copytree(data["valid"], base / "v")
    shutil.move(base / "v" / "003.Blue_box", base / "v" / "004.Yellow_box")
    return {"train": data["train"], "valid": base / "v"}


FAILURES = [
    # (name, how to set up: (tmp, data) -> (channels, hyperparameters), expected failure reason)
    ("no train channel", lambda t, d: ({"valid": d["valid"]}, FAST_HP),
     "no 'train' channel: give one with class folders of images"),
    ("empty train channel", lambda t, d: ({"train": make_empty(t)}, FAST_HP), "channel 'train' has no images"),
    ("valid classes differ", lambda t, d: (break_valid_classes(t, d), FAST_HP),
     "valid has classes not in train: Yellow_box; valid lacks classes of train: Blue_box"),
    ("test classes differ", lambda t, d: ({"train": d["train"], "test": make_imagefolder(t / "x", ["001.Red_box"], 2)},
                                          FAST_HP), "test lacks classes of train: Green_disc, Blue_box"),
    ("bad value", lambda t, d: (d, {**FAST_HP, "epochs": "two"}), "hyperparameter 'epochs' must be int, got 'two'"),
    ("unknown name", lambda t, d: (d, {**FAST_HP, "learning_rate": 0.1}), "unknown hyperparameter(s): learning_rate"),
    ("unknown channel", lambda t, d: ({**d, "training": d["train"]}, FAST_HP), "unknown channel(s): training"),
    ("one class", lambda t, d: ({"train": make_imagefolder(t / "one", ["001.A"], 4)}, FAST_HP),
     "channel 'train' has 1 class folder; need at least 2 classes"),
    ("bad pretrained file", lambda t, d: ({**d, "pretrained": make_junk_weights(t)}, FAST_HP),
     "pretrained weights file efficientnet_lite0.pt cannot be read as a PyTorch state_dict"),
]


def make_empty(tmp):
    for c in ("001.A", "002.B"):
        (tmp / "empty" / c).mkdir(parents=True)
    return tmp / "empty"


def make_junk_weights(tmp):
    (tmp / "pre").mkdir()
    (tmp / "pre" / "efficientnet_lite0.pt").write_bytes(b"junk")
    return tmp / "pre"


@pytest.mark.parametrize("name, setup, reason", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_write_one_human_line(tmp_path, tiny_data, name, setup, reason):
    channels, hp = setup(tmp_path, tiny_data)
    raw = {k: str(v) for k, v in hp.items()}
    base = local.make_tree(tmp_path / "ml", channels, {})
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(raw))
    result = run_train(base)
    assert result.returncode == 1, result.stdout + result.stderr
    assert failure_reason(base).startswith(reason)
    assert len((base / "output" / "failure").read_text().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (base / "model" / "model.pt").exists()


def test_missing_config_and_output_folder(tmp_path, tiny_data):
    base = local.make_tree(tmp_path, tiny_data, FAST_HP)
    (base / "input" / "config" / "resourceconfig.json").unlink()
    shutil.rmtree(base / "output")  # the toolkit alone would then exit 0 with no failure file
    result = run_train(base)
    assert result.returncode == 1
    assert failure_reason(base).startswith("missing ") and "resourceconfig.json" in failure_reason(base)


def test_pipe_mode_is_refused(tmp_path, tiny_data):
    base = local.make_tree(tmp_path, tiny_data, FAST_HP)
    config = base / "input" / "config" / "inputdataconfig.json"
    config.write_text(json.dumps({"train": {"TrainingInputMode": "Pipe"}}))
    assert run_train(base).returncode == 1
    assert "Pipe input mode" in failure_reason(base)


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path, tiny_data):
    train = shutil.copytree(tiny_data["train"], tmp_path / "train")
    (train / "001.Red_box" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (train / "002.Green_disc" / "readme.txt").write_text("not an image")
    base = local.make_tree(tmp_path / "ml", {"train": train}, {**FAST_HP, "epochs": 1})  # valid split from train
    result = run_train(base)
    assert result.returncode == 0, result.stderr
    report = read_json(base / "output" / "data" / "metrics.json")
    assert report["skipped_files"] == 2
    skipped = (base / "output" / "data" / "skipped_files.tsv").read_text()
    assert "corrupt.jpg" in skipped and "readme.txt" in skipped
    assert "held out" in result.stderr and "skipped 2 file(s)" in result.stderr


def test_early_stopping(tmp_path, tiny_data):
    base = local.make_tree(tmp_path, tiny_data, {**FAST_HP, "epochs": 5, "lr": 0, "early-stopping-patience": 1})
    result = run_train(base)
    assert result.returncode == 0, result.stderr
    assert "early stopping" in result.stdout
    assert read_json(base / "model" / "model.json")["metrics"]["epochs_run"] == 2


def test_sigterm_checkpoints_and_a_rerun_resumes(tmp_path, tiny_data):
    hp = {**FAST_HP, "epochs": 3, "batch-size": 2, "image-size": 96, "trainable": "all", "log-interval": 1}
    base = local.make_tree(tmp_path, tiny_data, hp)
    proc = subprocess.Popen([sys.executable, str(CONTAINER / "train")], env=program_env(base),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = []
    for line in proc.stdout:
        first.append(line)
        if line.startswith("epoch 2 step 3/"):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, "".join(first)
    first = "".join(first)
    assert "checkpoint saved" in first and "epoch=1/3" in first and "epoch=2/3" not in first
    assert not (base / "output" / "failure").exists() and not (base / "model" / "model.pt").exists()

    result = run_train(base)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    resumed_at = int(result.stderr.split("resuming from")[1].split("step ")[1].split()[0].rstrip(","))
    assert resumed_at >= 3  # the steps done before SIGTERM are not repeated
    assert "epoch=1/3" not in result.stdout and "epoch=2/3" in result.stdout and "epoch=3/3" in result.stdout
    assert read_json(base / "model" / "model.json")["metrics"]["epochs_run"] == 3


def test_cached_features_run_the_backbone_in_the_first_views_epochs_only(tmp_path, tiny_data):
    hp = {**FAST_HP, "epochs": 3, "feature-views": 2, "feature-cache-dir": str(tmp_path / "cache")}
    first = run_train(local.make_tree(tmp_path / "first", tiny_data, hp))
    assert first.returncode == 0, first.stderr
    # augmented views 0 and 1 (epochs 1, 2; epoch 3 reuses view 0) and the validation images
    assert first.stderr.count("through the backbone") == 3, first.stderr
    assert "train features (augmented view 1)" in first.stderr
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3

    again = run_train(local.make_tree(tmp_path / "again", tiny_data, hp))  # a second trial, say
    assert again.returncode == 0, again.stderr
    assert "through the backbone" not in again.stderr and again.stderr.count(f"from {tmp_path / 'cache'}") == 3
    valid = metrics.parse(first.stdout)["valid:accuracy"]
    assert len(valid) == 3 and metrics.parse(again.stdout)["valid:accuracy"] == valid  # same features, same run


def test_cache_off_trains_the_head_on_images(tmp_path, tiny_data):
    result = run_train(local.make_tree(tmp_path, tiny_data, {**FAST_HP, "cache-features": "false"}))
    assert result.returncode == 0, result.stderr
    assert "caching its features" not in result.stderr and "through the backbone" not in result.stderr
    assert len(metrics.parse(result.stdout)["valid:accuracy"]) == 2


def test_sigterm_while_features_are_computed_checkpoints(tmp_path, tiny_data):
    base = local.make_tree(tmp_path, tiny_data, {**FAST_HP, "batch-size": 1, "image-size": 160})
    proc = subprocess.Popen([sys.executable, str(CONTAINER / "train")], env=program_env(base),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "caching its features" in line:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, "".join(lines)
    assert "stopped by SIGTERM at epoch 1 step 0" in "".join(lines)
    result = run_train(base)
    assert result.returncode == 0 and "resuming from" in result.stderr, result.stderr


def test_checkpoint_of_another_configuration_is_refused(tmp_path, tiny_data, trained):
    base = local.make_tree(tmp_path, tiny_data, {**FAST_HP, "backbone": "resnet18", "weights": "none"})
    shutil.copy(trained / "checkpoints" / "checkpoint.pt", base / "checkpoints")
    assert run_train(base).returncode == 1
    assert "belongs to another configuration (backbone 'efficientnet_lite0' -> 'resnet18')" in failure_reason(base)


def test_internal_errors_still_write_a_one_line_reason(tmp_path, tiny_data, monkeypatch):
    from image_classifier import job, train
    base = local.make_tree(tmp_path, tiny_data, FAST_HP)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))

    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setattr(train, "run", boom)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    assert job.run_job() == job.EXIT_INTERNAL
    assert failure_reason(base) == "internal error: RuntimeError: disk on fire (traceback in the job log)"


def test_help_lists_hyperparameters_without_loading_torch():
    out = subprocess.run([sys.executable, str(CONTAINER / "train"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "early-stopping-patience" in out.stdout and "SAGEMAKER_BASE_DIR" in out.stdout
