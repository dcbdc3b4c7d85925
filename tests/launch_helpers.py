"""Running the launch scripts' --local mode as a user does: as processes, and the AWS CLI."""
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3

import sagemaker_rules
from conftest import ROOT, free_port


def _env(work: Path, extra: dict | None) -> dict:
    """The settings file is WORK/config.toml; the venv's bin (aws, ...) comes first on PATH."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "IC_CONFIG": str(work / "config.toml"), "PYTHONPATH": str(ROOT),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(extra or {})}


def launch(module, *args, cwd, env=None, **kw):
    """python -m launch.MODULE ARGS, to the end."""
    return subprocess.run([sys.executable, "-m", f"launch.{module}", *args], cwd=ROOT, env=_env(cwd, env),
                          capture_output=True, text=True, **kw)


@contextlib.contextmanager
def local_endpoint(work, script, *args, env=None):
    """launch.SCRIPT --local ... running until it reports InService; SIGTERM (its pid) afterwards."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", f"launch.{script}", "--local", *args, "--port", str(port)],
                               cwd=work, env=_env(work, env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "InService" in line:
                break
        assert "InService" in "".join(lines), "".join(lines)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    assert code == 0, process.stdout.read()
    assert not list((work / "local-endpoints").glob("*.json"))


def cli(port, *args, **env):
    """launch/invoke.sh (the AWS CLI) against the local gateway."""
    cli_env = {**os.environ, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
               "AWS_DEFAULT_REGION": "eu-west-1", "ENDPOINT_URL": f"http://127.0.0.1:{port}",
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env}
    return subprocess.run([str(ROOT / "launch" / "invoke.sh"), *map(str, args)], env=cli_env,
                          capture_output=True, text=True, timeout=120)


def runtime(port):
    """A SageMaker Runtime client of the local gateway; every request checked against the real
    service's model first (sagemaker_rules: the body's 6 MB, CustomAttributes, TargetModel)."""
    client = boto3.client("sagemaker-runtime", region_name="eu-west-1", endpoint_url=f"http://127.0.0.1:{port}",
                          aws_access_key_id="local", aws_secret_access_key="local")

    def check(params, model, **kwargs):
        found = sagemaker_rules.violations(model.name, params, model.service_model)
        if found:
            raise sagemaker_rules.InvalidRequest(model.name, found)
    client.meta.events.register("before-parameter-build.sagemaker-runtime.*", check)
    return client
