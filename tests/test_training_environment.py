"""training/environment.py: every variable `train` reads, its refusals, the folders it resolves
once per job, and the docs and --help generated from its table."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from image_classifier.errors import TrainingError
from image_classifier.training import environment


@pytest.fixture
def clean(monkeypatch, tmp_path):
    for name in ("SM_CHECKPOINT_DIR", "TRAINING_JOB_NAME", "FEATURE_CACHE_ROOT", "MASTER_ADDR", "MASTER_PORT",
                 "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", environment.PROCESSES_PER_HOST,
                 environment.STOPPED_MARKER):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    return monkeypatch


def test_defaults_and_the_leader(clean, tmp_path):
    assert environment.checkpoint_root() == tmp_path / "checkpoints"
    assert environment.leader("algo-1") == ("algo-1", 7777)
    assert environment.processes_per_host(gpus=0) == 1 and environment.processes_per_host(gpus=4) == 4
    assert environment.torchrun_place() is None and environment.stopped_marker() is None
    clean.setenv("MASTER_ADDR", "10.0.0.2")
    clean.setenv("MASTER_PORT", "29500")
    assert environment.leader("algo-1") == ("10.0.0.2", 29500)
    clean.setenv("RANK", "3")
    clean.setenv("WORLD_SIZE", "4")
    clean.setenv("LOCAL_RANK", "1")
    assert environment.torchrun_place() == (3, 4, 1)


@pytest.mark.parametrize("name, value, message", [
    ("MASTER_PORT", "70000", "MASTER_PORT must be a port number"),
    ("MASTER_PORT", "http", "MASTER_PORT must be a port number"),
    ("TRAIN_PROCESSES_PER_HOST", "two", "TRAIN_PROCESSES_PER_HOST must be a whole number >= 1"),
    ("TRAIN_PROCESSES_PER_HOST", "0", "TRAIN_PROCESSES_PER_HOST must be a whole number >= 1"),
])
def test_a_value_it_cannot_use_is_a_training_error(clean, name, value, message):
    clean.setenv(name, value)
    with pytest.raises(TrainingError, match=message):
        environment.leader("algo-1") if name == "MASTER_PORT" else environment.processes_per_host(0)


def test_locations_resolve_once_and_refuse_folders_outside(clean, tmp_path):
    where = environment.locations(tmp_path / "model", tmp_path / "output" / "data", False, "debug", "cache")
    assert where.checkpoints == tmp_path / "checkpoints" and where.trial is None
    assert where.debug == (tmp_path / "output" / "debug").resolve()
    assert where.feature_cache == (tmp_path / "output" / "cache").resolve()
    assert where.tensorboard == tmp_path / "output" / "tensorboard"
    clean.setenv("TRAINING_JOB_NAME", "ic-hpo-001-abc")
    where = environment.locations(tmp_path / "model", tmp_path / "out", True, "", "")
    assert where.trial == "ic-hpo-001-abc" and where.checkpoints == (tmp_path / "checkpoints" / "ic-hpo-001-abc")
    assert where.debug is None and where.feature_cache is None
    with pytest.raises(TrainingError, match="'debug-dir' must be a folder inside"):
        environment.locations(tmp_path / "model", tmp_path / "out", False, "../../elsewhere", "")
    shared = tmp_path.parent / f"{tmp_path.name}-shared"
    with pytest.raises(TrainingError, match="'feature-cache-dir' must be a folder inside"):
        environment.locations(tmp_path / "model", tmp_path / "out", False, "", str(shared / "f"))
    clean.setenv("FEATURE_CACHE_ROOT", str(shared))
    assert environment.locations(tmp_path / "m", tmp_path / "o", False, "", str(shared / "f")).feature_cache == \
        (shared / "f").resolve()


def test_exported_restores_what_was_there(clean):
    clean.setenv("CHECKPOINT_CONFIG_FILE_PATH", "/theirs.json")
    with environment.exported({"CHECKPOINT_CONFIG_FILE_PATH": "/ours.json", "TENSORBOARD_CONFIG_FILE_PATH": "/x"}):
        assert os.environ["CHECKPOINT_CONFIG_FILE_PATH"] == "/ours.json"
    assert os.environ["CHECKPOINT_CONFIG_FILE_PATH"] == "/theirs.json"
    assert "TENSORBOARD_CONFIG_FILE_PATH" not in os.environ


def test_the_docs_and_help_are_generated_from_the_table():
    table = environment.markdown_table()
    assert table in (ROOT / "docs" / "TRAINING.md").read_text()  # `python -m ...training.environment`, verbatim
    printed = subprocess.run([sys.executable, "-m", "image_classifier.training.environment"], capture_output=True,
                             text=True, check=True).stdout
    assert printed == table
    helped = subprocess.run([sys.executable, str(ROOT / "container" / "train"), "--help"], capture_output=True,
                            text=True, check=True).stdout
    assert "Environment:\n" + environment.help_text() + "\n" in helped


def test_every_variable_the_training_code_reads_is_in_the_table():
    """A variable read anywhere in training/ (through environment.py) is documented in VARIABLES."""
    source = (Path(environment.__file__)).read_text()
    read = set(re.findall(r'_get\("([A-Z_]+)"\)', source)) | set(re.findall(r'"([A-Z_]+)" in os\.environ', source)) \
        | set(re.findall(r'os\.environ\["([A-Z_]+)"\]', source))
    read |= {getattr(environment, name) for name in ("PROCESSES_PER_HOST", "STOPPED_MARKER", "FEATURE_CACHE_ROOT")}
    documented = {name.strip() for v in environment.VARIABLES for name in v.name.split(",")}
    assert read and read <= documented, read - documented


def test_the_program_and_its_environment_load_without_torch():
    """`train --help` answers at once, and the launch side's imports stay light: neither the job's
    module nor the shared modules the launch side reads import torch."""
    code = ("import sys, image_classifier.training.job, image_classifier.hyperparameters, image_classifier.metrics, "
            "image_classifier.search_space, image_classifier.paths; "
            "print(sorted({'torch', 'torchvision'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
