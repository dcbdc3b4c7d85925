"""build_and_push.sh: the exact commands (--dry-run), and the push path against stand-ins for the
aws and docker CLIs (the AWS boundary), which record what they were given."""
import os
import stat
import subprocess

import pytest

from conftest import ROOT

SCRIPT = str(ROOT / "build_and_push.sh")
CA = "/etc/ssl/certs/ca-certificates.crt"


def run(*args, env=None):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_dry_run_prints_the_exact_cpu_build_and_push_commands():
    out = run("--dry-run", "--account", "123456789012", "--region", "eu-west-1", "--tag", "v1", "dog-breeds")
    assert out.returncode == 0, out.stderr
    secret = f" --secret id=hostca\\,src={CA}" if os.path.exists(CA) else ""
    assert out.stdout.splitlines() == [
        f"+ env DOCKER_BUILDKIT=1 docker build --network=host --platform linux/amd64 -f {ROOT}/docker/Dockerfile "
        "-t dog-breeds:v1 "
        f"--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu{secret} {ROOT}/container",
        "+ aws ecr create-repository --repository-name dog-breeds --region eu-west-1 "
        "--image-scanning-configuration scanOnPush=true",
        "+ aws ecr get-login-password --region eu-west-1 | docker login --username AWS --password-stdin "
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "+ docker tag dog-breeds:v1 123456789012.dkr.ecr.eu-west-1.amazonaws.com/dog-breeds:v1",
        "+ docker push 123456789012.dkr.ecr.eu-west-1.amazonaws.com/dog-breeds:v1",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/dog-breeds:v1",
    ]


def test_the_platform_is_sagemakers_unless_told_otherwise():
    """SageMaker's instances are x86_64 (Graviton aside): an arm64 laptop must not push its native build."""
    assert " --platform linux/amd64 " in run("--dry-run", "--no-push", "x").stdout
    assert " --platform linux/arm64 " in run("--dry-run", "--no-push", "--platform", "linux/arm64", "x").stdout


def test_gpu_variant_and_china_regions():
    out = run("--dry-run", "--gpu", "--account", "1", "--region", "cn-north-1", "x")
    build = out.stdout.splitlines()[0]
    # the same base as the CPU image, torch (a CUDA build) from the registry, tagged gpu
    assert "BASE_IMAGE" not in build and "--build-arg TORCH_INDEX_URL= " in build and "-t x:gpu " in build
    assert out.stdout.splitlines()[-1] == "1.dkr.ecr.cn-north-1.amazonaws.com.cn/x:gpu"
    assert "--wheelhouse" in run("--gpu", "--wheelhouse", "/tmp", "--dry-run", "x").stderr


@pytest.mark.parametrize("args, env, message", [
    ([], {}, "usage"),
    (["Bad_Name"], {}, "not a valid ECR repository name"),
    (["a", "b"], {}, "one NAME only"),
    (["--no-push", "x"], {"DOCKER": "/nonexistent/docker"}, "docker not found"),
    (["--wheelhouse", "/nonexistent", "--dry-run", "x"], {}, "not a directory"),
])
def test_clear_errors(args, env, message):
    out = run(*args, env=env)
    assert out.returncode != 0 and message in out.stderr.lower() + out.stderr


def stub(path, body):
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_cli(tmp_path):
    """aws and docker stand-ins that log their arguments (and docker login's stdin)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub(bin_dir / "aws", f'''echo "aws $*" >> {log}
case "$*" in
  "sts get-caller-identity"*) [ -n "${{FAKE_NO_CREDENTIALS:-}}" ] && exit 255; echo 999988887777 ;;
  "configure get region") echo us-east-2 ;;
  "ecr describe-repositories"*) exit 254 ;;
  "ecr get-login-password"*) echo SECRET-PASSWORD-123 ;;
esac
''')
    stub(bin_dir / "docker", f'''echo "docker $*" >> {log}
[ "$1" = login ] && echo "stdin: $(cat)" >> {log}
exit 0
''')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER": str(bin_dir / "docker"), "AWS_ACCOUNT_ID": "",
           "AWS_REGION": "", "AWS_DEFAULT_REGION": ""}
    return env, log


def test_push_path_finds_account_and_region_and_never_shows_the_password(fake_cli):
    env, log = fake_cli
    out = run("--tag", "v2", "dogs", env=env)
    assert out.returncode == 0, out.stderr
    uri = "999988887777.dkr.ecr.us-east-2.amazonaws.com/dogs:v2"
    assert out.stdout.splitlines()[-1] == uri
    calls = log.read_text().splitlines()
    steps = [c.split()[:3] for c in calls if not c.startswith("stdin")]
    steps[5:7] = sorted(steps[5:7])  # the two ends of `aws ... | docker login` run at once
    assert steps == [
        ["docker", "build", "--network=host"], ["aws", "configure", "get"], ["aws", "sts", "get-caller-identity"],
        ["aws", "ecr", "describe-repositories"], ["aws", "ecr", "create-repository"],
        ["aws", "ecr", "get-login-password"], ["docker", "login", "--username"], ["docker", "tag", "dogs:v2"],
        ["docker", "push", uri]]
    assert "stdin: SECRET-PASSWORD-123" in calls  # reached docker only through stdin
    assert "SECRET-PASSWORD-123" not in out.stdout + out.stderr
    assert not any("SECRET" in c for c in calls if c.startswith("docker login"))


def test_missing_credentials_are_reported(fake_cli):
    env, _ = fake_cli
    out = run("--region", "eu-west-1", "dogs", env={**env, "FAKE_NO_CREDENTIALS": "1"})
    assert out.returncode == 1 and "no AWS credentials" in out.stderr


def test_missing_aws_cli_is_reported(fake_cli, tmp_path):
    env, _ = fake_cli
    (tmp_path / "bin" / "aws").unlink()
    out = run("dogs", env={**env, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert out.returncode == 1 and "aws CLI not found" in out.stderr
