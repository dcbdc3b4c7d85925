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
    assert row["config"] == "efficientnet_lite0 head" and row["images"] == 20
    assert len(row["baseline_epochs"]) == len(row["ours_epochs"]) == 2
    assert row["ours_later"] > 0 and row["baseline_later"] > 0 and 0 < row["matmul_share"] < 1
    assert found["machine"]["cores"] >= 1
    assert "| efficientnet_lite0 head | 20 |" in (tmp_path / "test-smoke.md").read_text()
