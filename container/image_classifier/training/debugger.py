"""SageMaker Debugger (smdebug) in training: which hook, if any, and never a crash because of it.

- A SageMaker job with Debugger on: SageMaker writes the hook config (debughookconfig.json, or the
  file SMDEBUG_CONFIG_FILE_PATH names); the hook, its collections and intervals come from it.
- Anywhere else: the `debug-dir` hyperparameter asks for a local hook writing there (relative to
  the job's output folder, /opt/ml/output), saving losses, weights, biases and gradients every
  `debug-interval` steps. Local rules and the report read it (launch/report.py).
- Otherwise: no hook.

smdebug also reads SageMaker's CheckpointConfig and TensorBoardOutputConfig files when it makes a
hook: it would then watch the checkpoint folder every step (logging each look), write its step
counters there (a tuning job's next trial resumes them) and its own summaries into TensorBoard's
folder. The hook is made with both pointed at an empty configuration: checkpoints and TensorBoard
are the training loop's (checkpoint.py, tensorboard.py).

Only trainable parameters are hooked and saved: a frozen backbone has no gradients, and saving
its weights every interval would cost disk and time for tensors that never change. Any smdebug
error is logged once and Debugger switched off; training goes on.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import tempfile
from pathlib import Path

from ..metrics import DEBUG_COLLECTIONS
from . import environment

log = logging.getLogger(__name__)

# smdebug's variables for the files SageMaker writes at /opt/ml/input/config (state_store.py, json_config.py)
SMDEBUG_ALSO_READS = ("CHECKPOINT_CONFIG_FILE_PATH", "TENSORBOARD_CONFIG_FILE_PATH")


@contextlib.contextmanager
def _own_checkpoints_and_tensorboard():
    """While a hook is made: smdebug's checkpoint and TensorBoard configuration files are an empty one."""
    with tempfile.TemporaryDirectory(prefix="smdebug-") as folder:
        empty = Path(folder) / "none.json"
        empty.write_text("{}")
        with environment.exported({name: str(empty) for name in SMDEBUG_ALSO_READS}):
            yield


def _hook_class():
    import smdebug.pytorch as smd

    class TrainableOnlyHook(smd.Hook):
        def _log_params(self, module):  # smdebug saves every parameter here; skip the frozen ones
            for name, param in module.named_parameters():
                if param.requires_grad:
                    self._save_for_tensor(tensor_name=f"{module._get_name()}_{name}", tensor_value=param.data)

        def has_default_configuration(self):
            # smdebug's error agent swallows an error inside its hooks (and turns smdebug off) only
            # for SageMaker's default configuration, and re-raises it otherwise: from inside the
            # model's forward pass. Say "default" so that no configuration can kill training.
            return True

    return TrainableOnlyHook


class Debugger:
    """A guarded smdebug hook: every call is a no-op once Debugger is off."""

    def __init__(self, hook=None, where: str = ""):
        self.hook, self.where = hook, where

    @classmethod
    def create(cls, debug_dir: Path | None, interval: int) -> "Debugger":
        try:
            if environment.debugger_config().exists():
                with _own_checkpoints_and_tensorboard():
                    hook = _hook_class().create_from_json_file(json_file_path=str(environment.debugger_config()))
                return cls(hook, f"SageMaker Debugger ({environment.debugger_config()})")
            if not debug_dir:
                return cls()
            import smdebug.pytorch as smd
            debug_dir.mkdir(parents=True, exist_ok=True)  # fails here, with a clear reason, if it cannot be made
            with _own_checkpoints_and_tensorboard():
                hook = _hook_class()(out_dir=str(debug_dir), save_config=smd.SaveConfig(save_interval=interval),
                                     include_collections=list(DEBUG_COLLECTIONS))
            return cls(hook, f"local Debugger hook in {debug_dir}, every {interval} steps")
        except Exception as e:  # noqa: BLE001 - Debugger must never stop training
            log.warning("SageMaker Debugger is off: could not create its hook: %s: %s", type(e).__name__, e)
            return cls()

    def __bool__(self) -> bool:
        return self.hook is not None

    def _call(self, what: str, *args) -> None:
        if self.hook is None:
            return
        try:
            getattr(self.hook, what)(*args)
        except Exception as e:  # noqa: BLE001
            log.warning("SageMaker Debugger is off from here on: %s failed: %s: %s", what, type(e).__name__, e)
            atexit.unregister(self.hook._cleanup)  # smdebug would fail the same way at exit
            self.hook = None

    def register(self, model, criterion) -> None:
        self._call("register_module", model)
        self._call("register_loss", criterion)
        if self.hook is not None:
            log.info("%s", self.where)

    def _mode(self, name: str) -> None:
        if self.hook is not None:  # without a hook, smdebug is not even imported (0.8 s)
            import smdebug.pytorch as smd
            self._call("set_mode", getattr(smd.modes, name))

    def train(self) -> None:
        self._mode("TRAIN")

    def eval(self) -> None:
        self._mode("EVAL")

    def predict(self) -> None:
        self._mode("PREDICT")

    def close(self) -> None:
        self._call("close")
