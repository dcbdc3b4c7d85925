"""A stop: SIGTERM (SageMaker's StopTrainingJob, MaxRuntime, spot interruption, the tuner's early
stopping) sets a flag that the loop checks after every step; the run then checkpoints, keeps its
best model so far and ends with Stopped, which the job turns into exit 143."""
from __future__ import annotations

import logging
import signal

from ..errors import described

log = logging.getLogger(__name__)


class Stopped(Exception):
    """SIGTERM arrived; the state is checkpointed and a rerun resumes from it."""


class StopFlag:
    """Set by SIGTERM; the loop checks it every step."""

    def __init__(self):
        self.requested = False

    def install(self) -> "StopFlag":
        signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        log.warning("SIGTERM received: finishing this step, then saving a checkpoint")
        self.requested = True


def attempt(what: str, action) -> bool:
    """Run one part of a stop; a failure is logged and the rest goes on (a stop has seconds, and
    the best model must not wait on, or be lost with, a checkpoint that cannot be written)."""
    try:
        action()
        return True
    except Exception as e:  # noqa: BLE001 - while stopping, one failure must not cost the rest
        log.error("stopping: %s failed: %s", what, described(e))
        return False
