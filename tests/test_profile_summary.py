"""Profiler verdicts over steps.jsonl / system.jsonl rows, with SageMaker's default thresholds."""
import json

import pytest

from launch import profile_summary as ps
from launch.profile_summary import Profile


def steps(n, data_wait=0.01, forward_backward=0.1, optimizer=0.01, start=100.0):
    return [{"epoch": 1, "step": i + 1, "time": start + i, "data_wait": data_wait,
             "forward_backward": forward_backward, "optimizer": optimizer} for i in range(n)]


def samples(n, cpu=50.0, gpu=None, gpu_memory=None, start=90.0):
    rows = []
    for i in range(n):
        row = {"time": start + i * 0.5, "cpu_percent": [cpu, cpu], "memory_percent": 30.0}
        if gpu is not None:
            row["gpu_percent"] = gpu[i % len(gpu)] if isinstance(gpu, list) else gpu
            row["gpu_memory_percent"] = gpu_memory
        rows.append(row)
    return rows


def by_rule(profile):
    return {v.rule: v for v in ps.verdicts(profile)}


def test_a_cpu_job_with_a_fast_loader_has_no_issue_and_no_gpu_verdicts():
    found = by_rule(Profile(steps(50), samples(200)))
    assert found["DataLoaderBottleneck"].status == "NoIssuesFound"
    assert found["StepOutlier"].status == "NoIssuesFound"
    for rule in ("CPUBottleneck", "LowGPUUtilization", "BatchSize"):
        assert found[rule].status == "NotEvaluated" and "no GPU" in found[rule].detail


def test_waiting_for_data_most_of_the_step_is_a_data_loader_bottleneck():
    verdict = by_rule(Profile(steps(50, data_wait=0.3), samples(10)))["DataLoaderBottleneck"]
    assert verdict.status == "IssuesFound" and "73% of step time waiting for data" in verdict.detail
    assert "num-workers" in verdict.recommendation


def test_busy_cpu_idle_gpu_is_a_cpu_bottleneck():
    found = by_rule(Profile(steps(50), samples(200, cpu=95, gpu=5.0, gpu_memory=20.0)))
    assert found["CPUBottleneck"].status == "IssuesFound"
    assert found["LowGPUUtilization"].status == "IssuesFound" and "underused" in found["LowGPUUtilization"].detail


def test_a_busy_but_fluctuating_gpu():
    found = by_rule(Profile(steps(50), samples(200, cpu=40, gpu=[95.0] * 9 + [0.0], gpu_memory=80.0)))
    assert found["LowGPUUtilization"].status == "IssuesFound" and "fluctuates" in found["LowGPUUtilization"].detail
    assert found["CPUBottleneck"].status == "NoIssuesFound"
    assert found["BatchSize"].status == "NoIssuesFound"  # GPU memory is well used


def test_everything_lightly_used_suggests_a_larger_batch():
    found = by_rule(Profile(steps(50), samples(200, cpu=30, gpu=40.0, gpu_memory=20.0)))
    assert found["BatchSize"].status == "IssuesFound" and "batch-size" in found["BatchSize"].recommendation


def test_a_well_fed_gpu_has_no_issue():
    found = by_rule(Profile(steps(50), samples(200, cpu=60, gpu=92.0, gpu_memory=85.0)))
    assert {v.status for v in found.values()} == {"NoIssuesFound"}


def test_start_up_samples_are_not_judged():
    # 20 samples of a busy CPU and idle GPU before the first step (model loading), then training
    start_up = samples(20, cpu=100, gpu=0.0, gpu_memory=10.0, start=80.0)
    training = samples(200, cpu=60, gpu=92.0, gpu_memory=85.0, start=100.0)
    assert by_rule(Profile(steps(50), start_up + training))["CPUBottleneck"].status == "NoIssuesFound"


def test_step_outliers_need_more_than_n_outliers():
    rows = steps(200)
    for i in range(0, 200, 15):  # 14 steps 100x slower
        rows[i]["forward_backward"] = 10.0
    verdict = ps.step_outliers(Profile(rows, []), stddev=2)
    assert verdict.status == "IssuesFound" and verdict.detail.startswith("14 step(s)")
    assert ps.step_outliers(Profile(rows, []), stddev=2, n_outliers=20).status == "NoIssuesFound"


def test_load_skips_a_half_written_line(tmp_path):
    (tmp_path / "steps.jsonl").write_text(json.dumps(steps(1)[0]) + "\n{\"epoch\": 1, \"st")
    profile = Profile.load(tmp_path)
    assert len(profile.steps) == 1 and profile.system == []
    assert Profile.load(tmp_path / "missing").steps == [] and not Profile.load(tmp_path / "missing")


def test_utilization_percentiles():
    use = ps.utilization(Profile(steps(5), samples(100, cpu=50, gpu=80.0, gpu_memory=60.0)))
    assert use["cpu_p50"] == pytest.approx(50) and use["gpu_p95"] == pytest.approx(80)
    assert use["gpu_memory_p50"] == pytest.approx(60)
