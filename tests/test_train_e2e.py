"""The real `train` program on generated data under a temporary /opt/ml tree."""
import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import CONTAINER, FAST_HP, failure_reason, program_env, read_json, run_train, tensorboard_scalars
from image_classifier import metrics
from image_classifier.errors import TrainingError
from launch.local import programs
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


def test_the_held_out_channels_are_evaluated(trained):
    found = read_json(trained / "output" / "data" / "metrics.json")
    test = found["evaluation"]["test"]
    assert set(found["evaluation"]) == {"valid", "test"} and test["images"] == 12 == found["test_images"]
    assert test["top1_accuracy"] == found["test_accuracy"] and test["top_k"] == 3 and test["top5_accuracy"] == 1
    low, high = test["top1_accuracy_ci95"]
    assert low <= test["top1_accuracy"] <= high and high - low > 0.1  # 12 images: a wide interval
    assert sum(map(sum, test["confusion_matrix"])) == 12 and [c["support"] for c in test["per_class"]] == [4, 4, 4]
    assert sum(b["images"] for b in test["reliability"]) == 12 and 0 <= test["expected_calibration_error"] <= 1
    wrong = 12 - round(test["top1_accuracy"] * 12)
    assert len(test["confident_mistakes"]) == wrong
    assert all(m["file"].split("/")[0][:3] in ("001", "002", "003") and m["true"] != m["predicted"]
               for m in test["confident_mistakes"])
    folder = trained / "output" / "data" / "evaluation"
    assert read_json(folder / "test.json") == test and (folder / "valid_per_class.tsv").exists()
    log = (trained / "train.log").read_text()
    assert len(metrics.parse(log)["test:top5_accuracy"]) == 1 and len(metrics.parse(log)["valid:macro_f1"]) == 1


def test_tensorboard_scalars_are_written_where_sagemaker_reads_them(trained):
    assert len(list((trained / "output" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    scalars = tensorboard_scalars(trained / "output" / "tensorboard", digits=4)
    history = read_json(trained / "output" / "data" / "metrics.json")["history"]
    assert scalars["accuracy/valid"] == [(h["epoch"], round(h["valid_acc"], 4)) for h in history]
    assert [s for s, _ in scalars["loss/train"]] == [1, 2] and len(scalars["lr"]) == 2
    assert {"throughput/train_images_per_second", "evaluation_test/top1_accuracy",
            "evaluation_valid/expected_calibration_error"} <= set(scalars)


def test_printed_metrics_match_the_regexes_sagemaker_uses(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "log-interval": 2})
    result = run_train(base)
    assert result.returncode == 0, result.stderr
    found = metrics.parse(result.stdout)
    assert all(len(found[n]) == 2 for n in ("train:loss", "train:accuracy", "epoch:seconds",
                                              "train:images_per_second"))
    # 2 epochs, then the selected model's line: SageMaker's tuner scores a job by its last value,
    # which is thus the saved model's
    saved = read_json(base / "model" / "model.json")["metrics"]
    assert len(found["valid:accuracy"]) == len(found["valid:loss"]) == 3
    assert metrics.objective_value(result.stdout) == round(saved["valid_accuracy"], 4)
    assert found["valid:accuracy"][saved["best_epoch"] - 1] == found["valid:accuracy"][-1]
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
    ("a class all truncated", lambda t, d: ({**d, "train": truncate_class(t, d["train"], "003.Blue_box")}, FAST_HP),
     "channel 'train' has no readable images for class(es): Blue_box"),
]


def truncate_class(tmp, train, folder):
    """A copy of `train` where every JPEG of one class lost its end: headers pass Image.verify()."""
    train = shutil.copytree(train, tmp / "truncated")
    for path in (train / folder).iterdir():
        path.write_bytes(path.read_bytes()[:-100])
    return train


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
    base = programs.make_tree(tmp_path / "ml", channels, {})
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(raw))
    result = run_train(base)
    assert result.returncode == 1, result.stdout + result.stderr
    assert failure_reason(base).startswith(reason)
    assert len((base / "output" / "failure").read_text().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (base / "model" / "model.pt").exists()


@pytest.mark.parametrize("name, value, inside", [
    ("debug-dir", "../../x", "output"), ("debug-dir", "{tmp}/x", "output"), ("debug-dir", "link/x", "output"),
    ("feature-cache-dir", "../../x", "output"), ("feature-cache-dir", "link", "output"),
    ("feature-cache-dir", "{tmp}/x", ""),  # absolute: inside /opt/ml unless FEATURE_CACHE_ROOT says where
])
def test_path_hyperparameters_cannot_leave_their_base_folder(tmp_path, tiny_data, name, value, inside):
    value = value.format(tmp=tmp_path)
    base = programs.make_tree(tmp_path / "ml", tiny_data, {**FAST_HP, name: value})
    (base / "output" / "link").symlink_to(tmp_path)  # a way out, followed before the check
    result = run_train(base)
    assert result.returncode == 1, result.stderr
    folder = (base / inside).resolve()
    assert failure_reason(base) == (f"hyperparameter '{name}' must be a folder inside {folder} "
                                    f"(relative to it); got '{value}', which is {(base / 'output' / value).resolve()}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml"]  # nothing written outside


HOST = {"current_host": "HOST", "hosts": ["HOST"]}  # "HOST": this machine's name (SageMaker's would not resolve)
MALFORMED = [
    # (file, its content: a JSON value, or bytes as they are; a fragment of the reason)
    ("hyperparameters.json", [], "the file must be an object of names to string values; got an array []"),
    ("hyperparameters.json", "epochs=2", "the file must be an object of names to string values; got a string"),
    ("hyperparameters.json", None, "got null"),
    ("hyperparameters.json", b"\xff\xfe{}", "is not valid JSON"),
    ("hyperparameters.json", b"{'epochs': '2'}", "is not valid JSON"),
    ("hyperparameters.json", {"epochs": 2},
     "hyperparameter 'epochs' must be a string, as SageMaker sends it; got a number 2"),
    ("hyperparameters.json", {"lr": ["0.1"]}, "hyperparameter 'lr' must be a string"),
    ("hyperparameters.json", {"cache-features": True}, "got a boolean true"),
    ("hyperparameters.json", {"lr": "nan"}, "hyperparameter 'lr' must be a finite number, got 'nan'"),
    ("hyperparameters.json", {"lr": "inf"}, "hyperparameter 'lr' must be a finite number, got 'inf'"),
    ("hyperparameters.json", {"epochs": "0"}, "hyperparameter 'epochs' must be >= 1"),
    ("hyperparameters.json", {"seed": str(2**64)}, "hyperparameter 'seed' must be <= 4294967295"),
    ("hyperparameters.json", {"sagemaker_job_name": "123"}, "sagemaker-training cannot read"),
    ("inputdataconfig.json", ["train"], "the file must be an object of channel names to channel settings"),
    ("inputdataconfig.json", {"train": "File"}, "channel 'train' must be an object; got a string \"File\""),
    ("inputdataconfig.json", {"train": {"TrainingInputMode": 5}}, "channel 'train' has TrainingInputMode 5"),
    ("resourceconfig.json", [HOST], "the file must be an object; got an array"),
    ("resourceconfig.json", {}, "current_host must be a string; got null"),
    ("resourceconfig.json", {"current_host": "HOST", "hosts": "HOST"}, "hosts must be an array of host names"),
    ("resourceconfig.json", {"current_host": "HOST", "hosts": []}, "is not in hosts"),
    ("resourceconfig.json", {**HOST, "network_interface_name": 0}, "network_interface_name must be a string"),
    ("resourceconfig.json", {**HOST, "instance_groups": [{"hosts": ["HOST"]}]}, "instance_group_name must be a string"),
]


@pytest.mark.parametrize("name, content, reason", MALFORMED,
                         ids=[f"{m[0].split('.')[0]}-{json.dumps(m[1]) if not isinstance(m[1], bytes) else m[1]}"
                              for m in MALFORMED])
def test_malformed_config_fails_with_one_line(tmp_path, tiny_data, name, content, reason):
    base = programs.make_tree(tmp_path, tiny_data, FAST_HP)
    path = base / "input" / "config" / name
    if name == "hyperparameters.json" and isinstance(content, dict):
        content = {**json.loads(path.read_text()), **content}  # one bad value among good ones
    if not isinstance(content, bytes):
        content = json.dumps(content).replace('"HOST"', json.dumps(socket.gethostname())).encode()
    path.write_bytes(content)
    result = run_train(base)
    assert result.returncode == 1, result.stdout + result.stderr
    failure = (base / "output" / "failure").read_text()
    assert len(failure.splitlines()) == 1 and reason in failure, failure
    assert not (base / "model" / "model.pt").exists()


def test_missing_config_and_output_folder(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, FAST_HP)
    (base / "input" / "config" / "resourceconfig.json").unlink()
    shutil.rmtree(base / "output")  # the toolkit alone would then exit 0 with no failure file
    result = run_train(base)
    assert result.returncode == 1
    assert failure_reason(base).startswith("missing ") and "resourceconfig.json" in failure_reason(base)


def test_pipe_mode_is_refused(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, FAST_HP)
    config = base / "input" / "config" / "inputdataconfig.json"
    config.write_text(json.dumps({"train": {"TrainingInputMode": "Pipe"}}))
    assert run_train(base).returncode == 1
    assert "Pipe input mode" in failure_reason(base)


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path, tiny_data):
    train = shutil.copytree(tiny_data["train"], tmp_path / "train")
    red = train / "001.Red_box"
    (red / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (red / "truncated.jpg").write_bytes((red / "001.Red_box_000.jpg").read_bytes()[:-100])
    (red / ".hidden.jpg").write_bytes((red / "001.Red_box_000.jpg").read_bytes())
    (red / "gone.jpg").symlink_to(red / "nowhere.jpg")
    (red / "loop.jpg").symlink_to(red / "loop.jpg")
    (red / "folder.jpg").mkdir()
    (train / "002.Green_disc" / "readme.txt").write_text("not an image")
    (train / "002.Green_disc" / "two\nlines.txt").write_text("a name that is escaped: one row")
    base = programs.make_tree(tmp_path / "ml", {"train": train}, {**FAST_HP, "epochs": 1})  # valid split from train
    result = run_train(base)
    assert result.returncode == 0, result.stderr
    report = read_json(base / "output" / "data" / "metrics.json")
    assert report["skipped_files"] == 8 and report["undecodable_images"] == 0  # once: at scan, not in the epoch
    rows = (base / "output" / "data" / "skipped_files.tsv").read_text().splitlines()
    reasons = {row.split("\t")[1].rsplit("/", 1)[1]: row.split("\t")[2] for row in rows[1:]}
    assert rows[0] == "channel\tpath\treason" and len(rows) == 9
    assert reasons["two\\nlines.txt"] == "not an image extension"
    assert reasons["readme.txt"] == "not an image extension" and reasons[".hidden.jpg"] == "hidden file"
    assert reasons["gone.jpg"] == "dangling symlink" and reasons["loop.jpg"] == "symlink loop"
    assert reasons["folder.jpg"] == "a folder, not an image file"
    assert reasons["corrupt.jpg"].startswith("cannot be decoded: ")
    assert reasons["truncated.jpg"].startswith("cannot be decoded: ") and "truncated" in reasons["truncated.jpg"]
    assert "held out" in result.stderr and "skipped 8 file(s)" in result.stderr
    # the split-off channel is "valid" to everything downstream: its metric lines and evaluation
    assert "valid" in report["evaluation"] and len(metrics.parse(result.stdout)["valid:macro_f1"]) == 1


def test_early_stopping(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "epochs": 5, "lr": 0, "early-stopping-patience": 1})
    result = run_train(base)
    assert result.returncode == 0, result.stderr
    assert "early stopping" in result.stdout
    assert read_json(base / "model" / "model.json")["metrics"]["epochs_run"] == 2


def test_sigterm_checkpoints_and_a_rerun_resumes(tmp_path, tiny_data):
    hp = {**FAST_HP, "epochs": 3, "batch-size": 2, "image-size": 96, "trainable": "all", "log-interval": 1}
    base = programs.make_tree(tmp_path, tiny_data, hp)
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
    assert not (base / "output" / "failure").exists()
    # SageMaker uploads /opt/ml/model when a stopped job ends: the best epoch so far is there
    assert "stopped: the best model so far (epoch 1" in first
    stopped = read_json(base / "model" / "model.json")["metrics"]
    assert stopped["best_epoch"] == 1 and stopped["epochs_run"] == 1 and "test_accuracy" not in stopped
    assert (base / "model" / "model.pt").exists()

    result = run_train(base)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    resumed_at = int(result.stderr.split("resuming from")[1].split("step ")[1].split()[0].rstrip(","))
    assert resumed_at >= 3  # the steps done before SIGTERM are not repeated
    assert "epoch=1/3" not in result.stdout and "epoch=2/3" in result.stdout and "epoch=3/3" in result.stdout
    assert read_json(base / "model" / "model.json")["metrics"]["epochs_run"] == 3


def test_cached_features_run_the_backbone_in_the_first_views_epochs_only(tmp_path, tiny_data):
    hp = {**FAST_HP, "epochs": 3, "feature-views": 2, "feature-cache-dir": str(tmp_path / "cache")}
    first = run_train(programs.make_tree(tmp_path / "first", tiny_data, hp), FEATURE_CACHE_ROOT=tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    # augmented views 0 and 1 (epochs 1, 2; epoch 3 reuses view 0), and the evaluation view of the
    # validation images (validation), the test images (the final evaluation) and the training images
    # (the data audit's near-duplicates)
    assert first.stderr.count("through the backbone") == 5, first.stderr
    assert "train features (augmented view 1)" in first.stderr
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 5

    again = run_train(programs.make_tree(tmp_path / "again", tiny_data, hp),  # a second trial, say
                      FEATURE_CACHE_ROOT=tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert "through the backbone" not in again.stderr and again.stderr.count(f"from {tmp_path / 'cache'}") == 5
    valid = metrics.parse(first.stdout)["valid:accuracy"]
    assert len(valid) == 3 + 1 and metrics.parse(again.stdout)["valid:accuracy"] == valid  # same features, same run


def test_cache_off_trains_the_head_on_images(tmp_path, tiny_data):
    result = run_train(programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "cache-features": "false"}))
    assert result.returncode == 0, result.stderr
    assert "caching its features" not in result.stderr and "through the backbone" not in result.stderr
    assert len(metrics.parse(result.stdout)["valid:accuracy"]) == 2 + 1  # each epoch, then the selected model


def test_sigterm_while_features_are_computed_checkpoints(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "batch-size": 1, "image-size": 160})
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
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "backbone": "resnet18", "weights": "none"})
    shutil.copy(trained / "checkpoints" / "checkpoint.pt", base / "checkpoints")
    assert run_train(base).returncode == 1
    assert "belongs to another configuration (backbone 'efficientnet_lite0' -> 'resnet18')" in failure_reason(base)


def test_internal_errors_still_write_a_one_line_reason(tmp_path, tiny_data, monkeypatch):
    from image_classifier.training import job, train
    base = programs.make_tree(tmp_path, tiny_data, FAST_HP)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))

    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setattr(train, "run", boom)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    assert job.run_job() == job.EXIT_INTERNAL
    assert failure_reason(base) == "internal error: RuntimeError: disk on fire (traceback in the job log)"


def test_a_failed_trial_removes_its_checkpoints(tmp_path, tiny_data, monkeypatch):
    from image_classifier.training import job, train
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "checkpoint-per-job": "true"})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    monkeypatch.setenv("TRAINING_JOB_NAME", "ic-hpo-002-abcd1234")

    def fails(hp, channels, where, *rest):
        where.checkpoints.mkdir(parents=True)
        (where.checkpoints / "checkpoint.pt").write_bytes(b"state")
        raise TrainingError("loss became nan")
    monkeypatch.setattr(train, "run", fails)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    assert job.run_job() == job.EXIT_FAILED
    assert not (base / "checkpoints" / "ic-hpo-002-abcd1234").exists()


def test_help_lists_hyperparameters_without_loading_torch():
    out = subprocess.run([sys.executable, str(CONTAINER / "train"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "early-stopping-patience" in out.stdout and "SAGEMAKER_BASE_DIR" in out.stdout


# `train` with a SIGTERM raised right after one given step: mid-epoch exactly, however fast steps are
STOP_AFTER_STEP = """
import runpy, signal, sys
from image_classifier.training import profiling
step_done, stop_after = profiling.Profiling.step_done, (int(sys.argv[2]), int(sys.argv[3]))
def step_done_then_sigterm(self, epoch, step):
    step_done(self, epoch, step)
    if (epoch, step) == stop_after:
        signal.raise_signal(signal.SIGTERM)
profiling.Profiling.step_done = step_done_then_sigterm
sys.argv = sys.argv[1:2]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def final_weights(base):
    return (torch.load(base / "model" / "model.pt", weights_only=True),
            torch.load(base / "checkpoints" / "checkpoint.pt", weights_only=True)["model"])


@pytest.mark.parametrize("cache", ["true", "false"])
def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path, tiny_data, cache):
    hp = {**FAST_HP, "batch-size": 4, "cache-features": cache, "num-workers": 1}
    whole = programs.make_tree(tmp_path / "whole", tiny_data, hp)
    assert run_train(whole).returncode == 0

    base = programs.make_tree(tmp_path / "resumed", tiny_data, hp)
    stop_after = ["2", "3"]  # epoch, step
    stopped = subprocess.run([sys.executable, "-c", STOP_AFTER_STEP, str(CONTAINER / "train"), *stop_after],
                             env=program_env(base), capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    assert "stopped by SIGTERM at epoch 2 step 3" in stopped.stderr
    result = run_train(base)
    assert result.returncode == 0 and "resuming from" in result.stderr, result.stderr
    for expected, got in zip(final_weights(whole), final_weights(base)):
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), \
            max((expected[k].float() - got[k].float()).abs().max().item() for k in expected)


def test_spot_tuning_trials_keep_their_own_checkpoints_until_they_end_and_prune_the_stale(tmp_path, tiny_data):
    """The trials of a tuning job share one checkpoint S3 prefix, which SageMaker copies into each
    new trial: a trial keeps its checkpoints in a folder named after its job while it may be
    resumed, removes it when it completes, and removes other trials' folders too old to resume."""
    hp = {**FAST_HP, "checkpoint-per-job": "true", "trial-lifetime-hours": 2}
    base = programs.make_tree(tmp_path, tiny_data, hp)
    root = base / "checkpoints"
    for name, age_hours in (("ic-hpo-000-stale", 3), ("ic-hpo-000-recent", 1)):  # trials stopped earlier
        (root / name).mkdir(parents=True)
        (root / name / "checkpoint.pt").write_bytes(b"state")
        (root / name / "written.json").write_text(json.dumps({"unix_seconds": time.time() - age_hours * 3600}))
    (root / "notes").mkdir()  # not a trial's folder
    job = {"TRAINING_JOB_NAME": "ic-hpo-001-abcd1234"}  # as SageMaker sets it in a trial
    stopped = subprocess.run([sys.executable, "-c", STOP_AFTER_STEP, str(CONTAINER / "train"), "1", "2"],
                             env=program_env(base, **job), capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143, stopped.stderr
    assert sorted(p.name for p in root.iterdir()) == ["ic-hpo-000-recent", "ic-hpo-001-abcd1234", "notes"]
    assert {p.name for p in (root / "ic-hpo-001-abcd1234").iterdir()} >= {"checkpoint.pt", "written.json"}
    assert not (root / "checkpoint.pt").exists()
    resumed = run_train(base, **job)  # a spot restart of the same trial
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    assert sorted(p.name for p in root.iterdir()) == ["ic-hpo-000-recent", "notes"]  # its own folder is gone


# `train` stopped after one given step by what can reach it: its whole process group signalled (as
# torchrun stops a rank: the loader's workers too), or SIGTERM followed by an error the stop caused
STOP_BY = """
import os, runpy, signal, sys
from image_classifier.training import profiling
step_done, how = profiling.Profiling.step_done, sys.argv[2]
def step_done_then_stop(self, epoch, step):
    step_done(self, epoch, step)
    if (epoch, step) == (2, 1):
        if how == "killpg":
            os.killpg(os.getpgrp(), signal.SIGTERM)
        elif how == "error":
            signal.raise_signal(signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
        else:  # the disk is full: the stop's checkpoint cannot be written
            from image_classifier.training import checkpoint
            def full(*args):
                raise OSError(28, "No space left on device")
            checkpoint.save = full
            signal.raise_signal(signal.SIGTERM)
profiling.Profiling.step_done = step_done_then_stop
sys.argv = sys.argv[1:2]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("how", ["killpg", "error", "disk-full"])
def test_a_stop_keeps_the_work_whatever_breaks_first(tmp_path, tiny_data, how):
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "epochs": 4, "batch-size": 4, "num-workers": 2,
                                                    "cache-features": "false"})
    stopped = subprocess.run([sys.executable, "-c", STOP_BY, str(CONTAINER / "train"), how], env=program_env(base),
                             capture_output=True, text=True, timeout=600, start_new_session=True)
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    assert not (base / "output" / "failure").exists() and "killed by signal" not in stopped.stderr.replace(
        "RuntimeError: DataLoader worker (pid 1) is killed by signal", ""), stopped.stderr
    progress = json.loads(torch.load(base / "checkpoints" / "checkpoint.pt", weights_only=True)["progress"])
    # the second epoch's first step; with the disk full, the first epoch's end (and the best model all the same)
    assert (progress["epoch"], progress["batches_done"]) == ((1, 0) if how == "disk-full" else (1, 1))
    saved = read_json(base / "model" / "model.json")["metrics"]
    last = [line for line in stopped.stdout.splitlines() if "valid_acc=" in line][-1]
    assert last == metrics.selected_line(saved["best_epoch"], saved["valid_loss"], saved["valid_accuracy"])


# `train` killed (SIGKILL: no SIGTERM, as a lost spot instance or a crash ends it) after one given step
KILL_AFTER_STEP = """
import os, runpy, signal, sys
from image_classifier.training import profiling
step_done, kill_after = profiling.Profiling.step_done, (int(sys.argv[2]), int(sys.argv[3]))
def step_done_then_die(self, epoch, step):
    step_done(self, epoch, step)
    if (epoch, step) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
profiling.Profiling.step_done = step_done_then_die
sys.argv = sys.argv[1:2]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_time_based_checkpoints_bound_what_a_kill_loses_and_resume_exactly(tmp_path, tiny_data):
    hp = {**FAST_HP, "batch-size": 4, "cache-features": "false", "num-workers": 1, "checkpoint-minutes": 1e-6}
    whole = programs.make_tree(tmp_path / "whole", tiny_data, {**hp, "checkpoint-minutes": 0})
    assert run_train(whole).returncode == 0
    base = programs.make_tree(tmp_path / "killed", tiny_data, hp)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_STEP, str(CONTAINER / "train"), "2", "3"],
                            env=program_env(base), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    saved = json.loads(torch.load(base / "checkpoints" / "checkpoint.pt", weights_only=True)["progress"])
    assert (saved["epoch"], saved["batches_done"]) == (1, 2)  # checkpointed after every step: one step lost
    result = run_train(base)
    assert result.returncode == 0 and "resuming from" in result.stderr and "epoch 2, step 2" in result.stderr
    for expected, got in zip(final_weights(whole), final_weights(base)):
        assert all(torch.equal(expected[k], got[k]) for k in expected)
