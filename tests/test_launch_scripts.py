"""Every launch script answers --help both ways it is run: `python launch/NAME.py` (how the
product is known) and `python -m launch.NAME`, from any folder."""
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["train", "tune", "deploy", "batch_transform", "multi_model", "cleanup", "upload_data", "report"]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("how", ["path", "module"])
def test_scripts_run_as_files_and_as_modules(script, how, tmp_path):
    argv = [str(ROOT / "launch" / f"{script}.py")] if how == "path" else ["-m", f"launch.{script}"]
    out = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage: python -m launch." in out.stdout and "--region" in out.stdout
