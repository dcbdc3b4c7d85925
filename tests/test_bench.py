"""The benchmarks still run (tiny settings; the numbers themselves go to docs/PERFORMANCE.md)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_training_throughput_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--per-class", "2",
                             "--epochs", "2", "--batch-size", "8", "--configs", "efficientnet_lite0:head",
                             "--name", "test-smoke", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    found = json.loads((tmp_path / "test-smoke.json").read_text())
    [row] = found["rows"]
    assert row["config"] == "efficientnet_lite0 head, cached features" and row["images"] == 20
    assert len(row["baseline_epochs"]) == len(row["ours_epochs"]) == 2
    assert row["ours_later"] > 0 and row["baseline_later"] > 0 and 0 < row["matmul_share"] < 1
    assert found["machine"]["cores"] >= 1
    assert "| efficientnet_lite0 head, cached features | 20 |" in (tmp_path / "test-smoke.md").read_text()


def test_training_step_benchmark_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"),
                             "--configs", "efficientnet_lite0:head", "--batches", "2", "--variants", "fp32,bf16-cl",
                             "--seconds", "0.1",
                             "--name", "step", "--results", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "step.json").read_text())["rows"]
    assert [(r["variant"], r["batch"]) for r in rows] == [("fp32", 2), ("bf16-cl", 2)]
    assert rows[0]["vs_fp32"] == 1 and rows[1]["vs_fp32"] > 0 and all(r["steps"] >= 3 for r in rows)
    assert all(r["share_of_matmul_peak"] > 0 and r["gflop_per_image"] > 0 for r in rows)  # timings: no upper bound


def test_accuracy_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "accuracy.py"), "--per-class", "3", "--epochs", "2",
                             "--configs", "head,head-no-cache", "--name", "acc", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "acc.json").read_text())["rows"]
    assert [(r["config"], r["cache"], r["train_images"], r["epochs"]) for r in rows] == [
        ("head", "1 view(s)", 30, 2), ("head-no-cache", "off", 30, 2)]
    assert all(0 <= r["test_accuracy"] <= 1 and r["job_seconds"] > 0 for r in rows)


def test_tuning_time_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "tuning_time.py"), "--trials", "2",
                             "--train-per-class", "2", "--valid-per-class", "2", "--name", "tune",
                             "--results", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "tune.json").read_text())["rows"]
    assert [(r["contender"], r["trials"]) for r in rows] == [("shared cached features", 2), ("no cached features", 2)]
    assert all(r["wall_seconds"] >= r["first_trial_seconds"] > 0 for r in rows)


def test_serving_latency_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_latency.py"),
                             "--backbones", "efficientnet_lite0", "--requests", "8", "--concurrency", "1,2",
                             "--servers", "fp32,bf16+batch2", "--cold-starts", "1",
                             "--train-per-class", "2", "--name", "test-smoke", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    found = json.loads((tmp_path / "test-smoke.json").read_text())
    inproc = [r for r in found["rows"] if r["contender"] == "in-process"]
    [agreement] = [r for r in found["rows"] if r["contender"].startswith("agreement")]
    served = [r for r in found["rows"] if r["contender"].startswith("serve")]
    assert [(r["precision"], r["threads"]) for r in inproc] == [("bf16", 1), ("fp32", 1)]
    assert set(inproc[0]["forward_ms_per_image"]) == {"1", "4", "8"} and inproc[0]["batch_gain"] > 0
    assert agreement["images"] == 250 and 0 <= agreement["top1_agreement"] <= 1  # every test photo
    assert 0 <= agreement["accuracy"] <= 1 and 0 <= agreement["max_probability_difference"] <= 1
    assert [(r["contender"], r["precision"], r["concurrency"]) for r in served] == [
        ("serve fp32", "fp32", 1), ("serve bf16+batch2", "bf16", 1), ("serve fp32", "fp32", 2),
        ("serve bf16+batch2", "bf16", 2)]
    for row in inproc + served:
        assert row["backbone"] == "efficientnet_lite0" and 1 <= row["requests"] <= 8
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["requests_per_second"] > 0
    assert served[0]["workers"] >= 1 and served[0]["vs_in_process"] > 0
    assert 0 < served[0]["cold_ping_s"] <= served[0]["cold_answer_s"] and served[0]["cold_loaded_s"] > 0
    assert 0 < served[0]["backend_p50_ms"] <= served[0]["p50_ms"] + 1  # whole ms in MMS's log
    assert "| efficientnet_lite0 | serve fp32 |" in (tmp_path / "test-smoke.md").read_text()


def test_serving_soak_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_soak.py"), "--requests", "60", "--kills", "1",
                             "--budget-requests", "8", "--name", "soak", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    soak, alone, beside, amplified = json.loads((tmp_path / "soak.json").read_text())["rows"]
    assert soak["requests"] == 60 and soak["good"] + soak["bad"] == 60 and soak["bad"] == 12
    assert soak["good_errors"] == 0 and soak["bad_wrong_answers"] == 0, soak
    assert soak["kills"] == 1 and len(soak["recovery_s"]) == 1 and soak["recovery_s"][0] > 0
    assert 0 < soak["pss_first_mib"] <= soak["pss_max_mib"]
    assert alone["p50_ms"] > 0 and beside["worst_case_ms"] > 0 and amplified["requests"] == 5
    assert (tmp_path / "soak_memory.png").stat().st_size > 0
    attacks = json.loads((tmp_path / "soak_attacks.json").read_text())["rows"]
    assert attacks[0]["phase"] == "attack: good traffic alone" and len(attacks) == 22
    assert all(r["as_expected"] and r["good_errors"] == 0 and r["good"] > 0 for r in attacks[1:]), attacks
    refused = [r for r in attacks if r["expected"] and r["expected"] != 200]
    assert len(refused) == 11 and all(r["pings_not_200"] == 0 for r in refused), attacks  # no worker held by them


def test_distributed_scaling_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "distributed_scaling.py"), "--per-class", "2",
                             "--epochs", "1", "--batch-size", "4", "--image-size", "64", "--name", "ddp",
                             "--results", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "ddp.json").read_text())["rows"]
    assert [r["hosts"] for r in rows] == [1, 1, 2] and rows[1]["vs_one_share"] == 1
    assert all(r["images_per_second"] > 0 and 0 <= r["valid_accuracy"] <= 1 for r in rows)


def test_serving_checks_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "serving_checks.py"), "--per-class", "1",
                             "--backbones", "efficientnet_lite0", "--name", "checks", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [row] = json.loads((tmp_path / "checks.json").read_text())["rows"]
    assert row["images"] == 10 and row["modes"] == 2 and row["same_numbers"] is True
    assert row["per_mode_seconds"] > 0 and row["one_pass_seconds"] > 0


def test_serve_graphs_benchmark_runs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_graphs.py"), "--backbones",
                             "efficientnet_lite0", "--seconds", "0.1", "--name", "graphs", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "graphs.json").read_text())["rows"]
    assert [r["contender"] for r in rows] == ["fp32 eager", "bf16 frozen", "bf16 compiled", "explain=gradcam"]
    assert rows[0]["vs_fp32"] == 1 and all(r["p50_ms"] > 0 and r["runs"] >= 1 for r in rows)


def test_audit_threshold_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "audit_threshold.py"), "--photos", "6",
                             "--copies", "2", "--name", "threshold", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "threshold.json").read_text())["rows"]
    assert len(rows) == 4 and rows[0]["n"] == 6 and all(-1 <= r["min"] <= r["max"] <= 1.0001 for r in rows)


def test_decode_cost_benchmark_runs(imagewoof, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "decode_cost.py"), "--side", "300",
                             "--repeats", "1", "--name", "decode", "--results", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "decode.json").read_text())["rows"]
    assert rows[0]["vs_photo"] == 1 and all(r["ms"] > 0 for r in rows)
    assert [r["status"] for r in rows if r["case"].startswith("refused")] == [413] * 6 + [400] * 2
    assert all(r["status"] == 200 for r in rows if not r["case"].startswith("refused"))
