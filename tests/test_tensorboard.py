"""tensorboard.py: the event files hold the scalars TensorBoard shows, where SageMaker uploads from."""
import json

from conftest import tensorboard_scalars as scalars

from image_classifier.training import tensorboard

ROW = {"epoch": 2, "train_loss": 0.9, "valid_loss": 1.1, "train_acc": 0.6, "valid_acc": 0.5,
       "images_per_second": 40.0, "seconds": 12.5}
SUMMARY = {"top1_accuracy": 0.75, "top5_accuracy": 1.0, "macro_f1": 0.7, "expected_calibration_error": 0.05}


def test_epochs_and_the_evaluation_are_written(tmp_path):
    board = tensorboard.Scalars(tmp_path)
    board.epoch(ROW, lr=0.001)
    board.evaluation("test", SUMMARY, step=2)
    board.close()
    found = scalars(tmp_path)
    assert found["loss/valid"] == [(2, 1.1)] and found["lr"] == [(2, 0.001)]
    assert found["time/epoch_seconds"] == [(2, 12.5)]
    final = {f"evaluation_test/{tag}" for tag in tensorboard.FINAL_SCALARS}
    assert set(found) == {*tensorboard.EPOCH_SCALARS, "lr", *final}
    assert found["evaluation_test/top1_accuracy"] == [(2, 0.75)]


def test_a_process_that_is_not_the_leader_writes_nothing(tmp_path):
    board = tensorboard.Scalars(None)
    board.epoch(ROW, lr=0.1)
    board.evaluation("valid", SUMMARY, 1)
    board.close()
    assert list(tmp_path.iterdir()) == []


def test_the_folder_is_sagemakers_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert tensorboard.directory() == tmp_path / "output" / "tensorboard"  # no config: SageMaker's default
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / tensorboard.CONFIG_FILE).write_text(json.dumps({"LocalPath": str(tmp_path / "tb"),
                                                              "S3OutputPath": "s3://bucket/tb"}))
    assert tensorboard.directory() == tmp_path / "tb"
    (config / tensorboard.CONFIG_FILE).write_text("not json")
    assert tensorboard.directory() == tmp_path / "output" / "tensorboard"
