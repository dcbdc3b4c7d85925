"""smdebug in the real `train`: the local hook (debug-dir), SageMaker's hook config, frozen
parameters left alone, and a broken Debugger that does not stop training."""
import json

import pytest

from conftest import FAST_HP, run_train
from launch.local import programs

pytestmark = pytest.mark.slow
LOSS = "CrossEntropyLoss_output_0"


def trial_of(path):
    from smdebug.trials import create_trial
    return create_trial(str(path))


@pytest.fixture(scope="module")
def debugged(tmp_path_factory, tiny_data):
    base = programs.make_tree(tmp_path_factory.mktemp("debugged"), tiny_data,
                           {**FAST_HP, "debug-dir": "debug", "debug-interval": 1})
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    return base, result


def test_local_hook_saves_losses_in_train_and_eval_modes(debugged):
    from smdebug import modes
    base, result = debugged
    assert f"local Debugger hook in {base / 'output' / 'debug'}, every 1 steps" in result.stderr
    trial = trial_of(base / "output" / "debug")
    loss = trial.tensor(LOSS)
    train_steps, eval_steps = loss.steps(mode=modes.TRAIN), loss.steps(mode=modes.EVAL)
    # 36 images, batch 8 (last partial batch dropped): 4 steps an epoch, 2 epochs
    assert len(train_steps) == 8
    assert len(eval_steps) == 2 * 2  # 12 valid images in batches of 8, each epoch
    assert all(loss.value(s, mode=modes.TRAIN) > 0 for s in train_steps)


def test_only_trainable_parameters_are_saved(debugged):
    base, _ = debugged
    trial = trial_of(base / "output" / "debug")
    weights, gradients = trial.tensor_names(collection="weights"), trial.tensor_names(collection="gradients")
    assert weights and gradients
    # trainable=head: the new classifier only; the frozen backbone is neither hooked nor saved
    assert all("classifier" in name for name in weights + gradients), weights + gradients


def test_sagemaker_hook_config_is_used_when_present(tmp_path, tiny_data):
    out = tmp_path / "tensors"
    config = tmp_path / "debughookconfig.json"
    config.write_text(json.dumps({  # as SageMaker writes it for the DebuggerHookConfig launch/jobs.py sends
        "LocalPath": str(out), "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [{"CollectionName": "losses", "CollectionParameters": {"save_interval": "2"}}]}))
    base = programs.make_tree(tmp_path / "ml", tiny_data, FAST_HP)
    # What SageMaker also writes for a job with CheckpointConfig and TensorBoardOutputConfig (at fixed
    # paths under /opt/ml/input/config, which smdebug reads unless these variables name others)
    checkpoints, board = base / "checkpoints", base / "output" / "tensorboard"
    (tmp_path / "checkpointconfig.json").write_text(json.dumps({"LocalPath": str(checkpoints)}))
    (tmp_path / "tensorboardoutputconfig.json").write_text(json.dumps({"LocalPath": str(board)}))
    result = run_train(base, SMDEBUG_CONFIG_FILE_PATH=str(config),
                       CHECKPOINT_CONFIG_FILE_PATH=str(tmp_path / "checkpointconfig.json"),
                       TENSORBOARD_CONFIG_FILE_PATH=str(tmp_path / "tensorboardoutputconfig.json"))
    assert result.returncode == 0, result.stderr
    assert f"SageMaker Debugger ({config})" in result.stderr
    assert LOSS in trial_of(out).tensor_names(collection="losses")
    # smdebug neither watches nor writes the checkpoints (a next trial would resume its step counters
    # from them), nor writes its own summaries among ours, nor logs a line a step
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best_model.pt", "checkpoint.pt", "written.json"]
    assert sorted(p.name for p in board.iterdir() if not p.name.startswith("events.out.tfevents")) == []
    assert len(list(board.glob("events.out.tfevents*"))) == 1  # ours (tensorboard.py)
    output = result.stdout + result.stderr
    assert "checkpoint files" not in output and "checkpoint config file" not in output, output


@pytest.mark.parametrize("where", ["hyperparameter", "sagemaker-config"])
def test_a_debugger_that_cannot_write_does_not_stop_training(tmp_path, tiny_data, where):
    (tmp_path / "ml" / "output").mkdir(parents=True)
    (tmp_path / "ml" / "output" / "a-file").write_text("")
    unwritable = tmp_path / "ml" / "output" / "a-file" / "debug"  # under a file: no folder can be made there
    hp, env = dict(FAST_HP), {}
    if where == "hyperparameter":  # fails when the hook is made
        hp["debug-dir"] = "a-file/debug"
    else:  # fails later, inside smdebug's forward hooks, when it first writes
        config = tmp_path / "debughookconfig.json"
        config.write_text(json.dumps({"LocalPath": str(unwritable), "HookParameters": {"save_interval": "1"}}))
        env["SMDEBUG_CONFIG_FILE_PATH"] = str(config)
    base = programs.make_tree(tmp_path / "ml", tiny_data, hp)
    result = run_train(base, **env)
    assert result.returncode == 0, result.stderr
    said = {"hyperparameter": "SageMaker Debugger is off: could not create its hook: NotADirectoryError",
            "sagemaker-config": "SMDebug error has occurred, disabling SMDebug for the rest of the training job"}
    output = result.stdout + result.stderr  # smdebug logs to stdout
    assert said[where] in output, output[-3000:]
    assert "Exception ignored" not in output
    assert (base / "model" / "model.json").exists()
