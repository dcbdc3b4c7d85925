"""Where training time goes, written beside the job's metrics (SM_OUTPUT_DATA_DIR/profile/):

- steps.jsonl: per training step, seconds waiting for data, in forward + backward, in the
  optimizer (on a GPU each phase is synchronized before it is timed), and when it ended;
- system.jsonl: CPU (per core), memory, and GPU utilization and memory (allocated GB, and the
  share of the GPU's memory torch has reserved) where there is a GPU,
  sampled every `interval` seconds by a background thread;
- trace.json: with `profile-steps=N`, a torch.profiler trace of N training steps (Chrome trace
  format: chrome://tracing or https://ui.perfetto.dev).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import psutil
import torch

log = logging.getLogger(__name__)
# The first sample comes at once: a job shorter than one interval (cached features, a warm cache)
# would otherwise have a single sample, at its end, and an empty utilization chart.
FIRST_SAMPLE_SECONDS = 0.05


class StepTimer:
    """Splits each training step into data wait, forward/backward and optimizer time."""

    def __init__(self, path: Path | None, device: torch.device):
        self.file = open(path, "a") if path else None
        self.cuda = device.type == "cuda"
        self.mark = time.perf_counter()
        self.step: dict = {}
        self.totals = {"data_wait": 0.0, "forward_backward": 0.0, "optimizer": 0.0}

    def _lap(self, phase: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.step[phase] = now - self.mark
        self.totals[phase] += now - self.mark
        self.mark = now

    def data_ready(self) -> None:
        self._lap("data_wait")

    def backward_done(self) -> None:
        self._lap("forward_backward")

    def optimizer_done(self, epoch: int, step: int) -> None:
        self._lap("optimizer")
        if self.file:
            row = {"epoch": epoch, "step": step, "time": round(time.time(), 3),
                   **{k: round(v, 6) for k, v in self.step.items()}}
            self.file.write(json.dumps(row) + "\n")
        self.step = {}

    def restart(self) -> None:
        """Time not spent in a step (evaluation, checkpoints, caching features) is nobody's data wait."""
        self.mark = time.perf_counter()

    def summary(self) -> str:
        """Where the time went since the last summary; the counts start again."""
        total = sum(self.totals.values()) or 1.0
        text = " ".join(f"{k}={v:.1f}s({100 * v / total:.0f}%)" for k, v in self.totals.items())
        self.totals = dict.fromkeys(self.totals, 0.0)
        return text

    def close(self) -> None:
        if self.file:
            self.file.close()


class SystemMonitor(threading.Thread):
    """Samples CPU, memory and (if present) GPU use until stopped."""

    def __init__(self, path: Path, interval: float = 0.5):
        super().__init__(name="system-monitor", daemon=True)
        self.path, self.interval, self.stopped = path, interval, threading.Event()
        self.gpu_total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0

    def run(self) -> None:
        psutil.cpu_percent(percpu=True)  # the first call only starts the measurement
        with open(self.path, "a") as out:
            done, wait = False, FIRST_SAMPLE_SECONDS
            while not done:  # the last sample, at stop, covers the time since the one before
                done = self.stopped.wait(wait)
                wait = self.interval
                memory = psutil.virtual_memory()
                sample = {"time": round(time.time(), 3), "cpu_percent": psutil.cpu_percent(percpu=True),
                          "memory_percent": memory.percent, "memory_used_gb": round(memory.used / 1e9, 3)}
                if torch.cuda.is_available():
                    sample["gpu_memory_gb"] = round(torch.cuda.memory_allocated() / 1e9, 3)
                    sample["gpu_memory_percent"] = round(100 * torch.cuda.memory_reserved() / self.gpu_total, 1)
                    try:
                        sample["gpu_percent"] = torch.cuda.utilization()
                    except Exception:  # noqa: BLE001 - needs NVML (pynvml); memory is still known
                        pass
                out.write(json.dumps(sample) + "\n")
                out.flush()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def torch_profiler(path: Path, steps: int):
    """A torch.profiler that records `steps` training steps after one warm-up step, or None."""
    if steps <= 0:
        return None
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    def save(prof):
        prof.export_chrome_trace(str(path))
        log.info("torch.profiler trace of %d steps: %s", steps, path)

    return torch.profiler.profile(activities=activities,
                                  schedule=torch.profiler.schedule(wait=0, warmup=1, active=steps,
                                                                                           repeat=1),
                                  on_trace_ready=save)


class Profiling:
    """The step timer, the system monitor and the optional torch.profiler of one training run."""

    def __init__(self, directory: Path | None, device: torch.device, trace_steps: int = 0):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.timer = StepTimer(directory / "steps.jsonl" if directory else None, device)
        self.monitor = SystemMonitor(directory / "system.jsonl") if directory else None
        self.trace = torch_profiler(directory / "trace.json", trace_steps) if directory else None
        if self.monitor:
            self.monitor.start()
        if self.trace:
            self.trace.start()

    def step_done(self, epoch: int, step: int) -> None:
        self.timer.optimizer_done(epoch, step)
        if self.trace:
            self.trace.step()

    def close(self) -> None:
        if self.trace:
            self.trace.stop()
            self.trace = None
        if self.monitor:
            self.monitor.stop()
            self.monitor = None
        self.timer.close()
