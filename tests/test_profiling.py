"""Where training time goes: per-step phases, system samples and a torch.profiler trace from the real `train`."""
import json
import os

import pytest

from conftest import FAST_HP, run_train
from image_classifier import metrics
from launch.local import programs

pytestmark = pytest.mark.slow


def test_steps_system_samples_and_trace(tmp_path, tiny_data):
    base = programs.make_tree(tmp_path, tiny_data, {**FAST_HP, "profile-steps": 2})
    result = run_train(base)
    assert result.returncode == 0, result.stderr
    profile = base / "output" / "data" / "profile"
    steps = [json.loads(line) for line in (profile / "steps.jsonl").read_text().splitlines()]
    assert [(s["epoch"], s["step"]) for s in steps] == [(e, i) for e in (1, 2) for i in (1, 2, 3, 4)]
    assert all(s["data_wait"] >= 0 and s["forward_backward"] > 0 and s["optimizer"] > 0 for s in steps)
    samples = [json.loads(line) for line in (profile / "system.jsonl").read_text().splitlines()]
    assert samples and all(len(s["cpu_percent"]) == os.cpu_count() and 0 < s["memory_percent"] < 100
                           for s in samples)
    trace = json.loads((profile / "trace.json").read_text())
    assert any(e.get("name") == "ProfilerStep#1" for e in trace["traceEvents"])
    lines = [line for line in result.stdout.splitlines() if line.startswith("profile epoch=")]
    assert len(lines) == 2 and "data_wait=" in lines[0] and "forward_backward=" in lines[0]
    # the extra line does not disturb the metric regexes SageMaker reads
    assert len(metrics.parse(result.stdout)["valid:accuracy"]) == 2 + 1  # each epoch, then the selected model


def test_a_job_shorter_than_the_interval_still_has_samples_from_its_start(tmp_path):
    import json
    import time

    from image_classifier.training.profiling import SystemMonitor
    monitor = SystemMonitor(tmp_path / "system.jsonl", interval=30)
    monitor.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "system.jsonl").exists() or not (tmp_path / "system.jsonl").read_text().strip():
        assert time.monotonic() < deadline, "no sample at the start"
        time.sleep(0.01)
    stopping = time.time()
    monitor.stop()
    samples = [json.loads(line) for line in (tmp_path / "system.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and samples[0]["time"] < stopping <= samples[1]["time"] + 0.001  # one at the start
