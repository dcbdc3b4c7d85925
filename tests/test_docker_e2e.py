"""The real image: built with build_and_push.sh against a private Docker daemon (no bridge
network, host networking, 127.0.0.1), then local_test's train, serve and predict in containers."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import FAST_HP, IN_CI, ROOT, free_port
from launch_helpers import cli, launch, local_endpoint

pytestmark = pytest.mark.slow
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")  # Debian's client: BuildKit without buildx
IMAGE = "image-classifier:test"
GPU_IMAGE = "image-classifier:gpu-test"
DOCKER_DIR = Path(os.environ.get("IMAGE_CLASSIFIER_DOCKER_DIR", "/var/tmp/image-classifier-docker"))


def wheelhouse() -> str | None:
    """Where the CPU torch wheel lies on these machines (pip's find-links), for an offline build."""
    if os.environ.get("WHEELHOUSE"):
        return os.environ["WHEELHOUSE"]
    out = subprocess.run(["pip", "config", "get", "global.find-links"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if out.returncode == 0 and list(Path(path).glob("torch-*.whl")) else None


def why_no_docker() -> str | None:
    if not shutil.which("dockerd") or not Path(DOCKER).exists():
        return "Debian's docker.io is not installed (make test installs it when run as root)"
    if os.geteuid() != 0:
        return "starting a private dockerd needs root"
    if not shutil.which("debootstrap"):
        return "debootstrap is not installed (needed for the local base image)"
    return None


@pytest.fixture(scope="session")
def docker_env(tmp_path_factory):
    reason = why_no_docker()
    if reason and IN_CI:
        pytest.fail(f"Docker tests cannot run: {reason}")
    if reason:
        pytest.skip(reason=f"Docker tests cannot run: {reason}")
    pid_file = DOCKER_DIR / "dockerd.pid"
    already = pid_file.exists() and subprocess.run(["kill", "-0", pid_file.read_text().strip()]).returncode == 0
    start = subprocess.run([str(ROOT / "docker" / "dockerd.sh"), "start", str(DOCKER_DIR)],
                           capture_output=True, text=True)
    assert start.returncode == 0, start.stderr
    env = dict(os.environ, DOCKER=DOCKER, DOCKER_HOST=start.stdout.strip().split("=", 1)[1])
    try:
        base = subprocess.run([str(ROOT / "docker" / "make_base_image.sh")], env=env, capture_output=True,
                              text=True, timeout=900)
        assert base.returncode == 0, base.stderr
        args = [str(ROOT / "build_and_push.sh"), "--no-push", "--tag", "test"]
        if wheelhouse():
            args += ["--wheelhouse", wheelhouse()]
        build = subprocess.run(args + ["image-classifier"], env=env, capture_output=True, text=True, timeout=1800)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        assert build.stdout.strip().splitlines()[-1] == IMAGE
        yield env
    finally:
        if not already:  # stop only the daemon this session started
            subprocess.run([str(ROOT / "docker" / "dockerd.sh"), "stop", str(DOCKER_DIR)])


def docker(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, **kw)


@pytest.fixture
def test_dir(tmp_path):
    # Only the inputs: a developer's earlier train_local run may have left outputs there.
    return shutil.copytree(ROOT / "local_test" / "test_dir", tmp_path / "test_dir",
                           ignore=shutil.ignore_patterns("model", "output", "checkpoints"))


def test_image_contract_labels_and_no_secrets_in_layers(docker_env):
    config = json.loads(docker(docker_env, "image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert config["Env"][0].startswith("PATH=/opt/program:")  # our train, not the toolkit's
    # The host's CA bundle (a build secret) and the wheelhouse (a bind mount) are in no layer.
    host_ca = hashlib.sha256(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()).hexdigest()
    saved = subprocess.run([DOCKER, "save", IMAGE], env=docker_env, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as image:
        for layer in (m for m in image.getmembers() if m.name.endswith("layer.tar")):
            with tarfile.open(fileobj=image.extractfile(layer)) as files:
                for f in files.getmembers():
                    assert not f.name.endswith(".whl") or "/python-wheels/" in f.name, f.name
                    assert "hostca" not in f.name
                    if f.name.endswith(".crt") and f.isfile():
                        assert hashlib.sha256(files.extractfile(f).read()).hexdigest() != host_ca, f.name


@pytest.fixture(scope="session")
def gpu_image(docker_env) -> str:
    """The CUDA build (build_and_push.sh --gpu): the same base with the registry's CUDA torch. It
    builds and runs here without a GPU; on one, the host's driver makes CUDA available."""
    build = subprocess.run([str(ROOT / "build_and_push.sh"), "--gpu", "--no-push", "--tag", "gpu-test",
                            "image-classifier"], env=docker_env, capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert build.stdout.strip().splitlines()[-1] == GPU_IMAGE
    return GPU_IMAGE


def test_the_gpu_image_holds_a_cuda_torch(docker_env, gpu_image):
    probe = docker(docker_env, "run", "--rm", "--network=none", "--entrypoint", "python3", gpu_image, "-c",
                   "import torch, torchvision; print(torch.version.cuda, torch.cuda.is_available())")
    assert probe.returncode == 0, probe.stderr
    cuda, available = probe.stdout.split()
    assert cuda.split(".")[0].isdigit() and available == "False"  # a CUDA build; no GPU on this machine
    cpu = docker(docker_env, "run", "--rm", "--network=none", "--entrypoint", "python3", IMAGE, "-c",
                 "import torch; print(torch.version.cuda)")
    assert cpu.stdout.strip() == "None"


@pytest.mark.parametrize("image", ["cpu", "gpu"])
def test_train_serve_predict_in_containers(docker_env, test_dir, image, request):
    image = IMAGE if image == "cpu" else request.getfixturevalue("gpu_image")
    env = dict(docker_env, TEST_DIR=str(test_dir))
    train = subprocess.run([str(ROOT / "local_test" / "train_local.sh"), image], env=env, capture_output=True,
                           text=True, timeout=600)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "valid_acc=" in train.stdout and (test_dir / "model" / "model.json").exists()

    port, name = free_port(), f"ic-test-{uuid.uuid4().hex[:8]}"
    env.update(PORT=str(port), NAME=name)
    serve = subprocess.Popen([str(ROOT / "local_test" / "serve_local.sh"), image], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert serve.poll() is None, serve.stdout.read()
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "no healthy /ping from the container"
            time.sleep(0.2)
        predict = ROOT / "local_test" / "predict.sh"
        good = subprocess.run([str(predict), str(ROOT / "local_test" / "samples" / "beagle.jpg")], env=env,
                              capture_output=True, text=True)
        assert good.returncode == 0, good.stderr
        answer = json.loads(good.stdout)["predictions"][0]
        assert answer["label"] == "beagle" and len(answer["top_k"]) == 3
        bad = subprocess.run([str(predict), str(test_dir / "README.md"), "text/plain"], env=env,
                             capture_output=True, text=True)
        assert bad.returncode == 1 and "HTTP 415" in bad.stderr
        assert json.loads(bad.stdout)["code"] == 415 and "Traceback" not in bad.stdout
        assert requests.get(f"http://127.0.0.1:{port}/ping").status_code == 200
    finally:
        docker(docker_env, "stop", name)  # SIGTERM via tini to serve
        code = serve.wait(60)
    assert code == 0, serve.stdout.read()
    assert name not in docker(docker_env, "ps", "-a", "--format", "{{.Names}}").stdout


def test_failure_reason_from_a_container(docker_env, test_dir):
    (test_dir / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"epochs": "many"}))
    train = subprocess.run([str(ROOT / "local_test" / "train_local.sh"), IMAGE],
                           env=dict(docker_env, TEST_DIR=str(test_dir)), capture_output=True, text=True)
    assert train.returncode == 1
    assert (test_dir / "output" / "failure").read_text().strip() == "hyperparameter 'epochs' must be int, got 'many'"
    assert "hyperparameter 'epochs' must be int" in train.stderr


def test_sigterm_reaches_training_in_a_container(docker_env, test_dir):
    config = test_dir / "input" / "config" / "hyperparameters.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "epochs": "20", "trainable": "all",
                                  "batch-size": "2"}))
    name = f"ic-train-{uuid.uuid4().hex[:8]}"
    run = subprocess.Popen([DOCKER, "run", "--rm", "--network=host", "--name", name, "-v", f"{test_dir}:/opt/ml",
                            IMAGE, "train"], env=docker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    for line in run.stdout:
        if line.startswith("epoch 1 step 3/"):
            docker(docker_env, "stop", name)
            break
    assert run.wait(120) == 143, run.stdout.read()
    assert (test_dir / "checkpoints" / "checkpoint.pt").exists()
    assert not (test_dir / "output" / "failure").exists()


def test_launch_local_with_the_docker_runner(docker_env, tiny_data, tmp_path):
    """launch.train and launch.deploy --local --local-runner docker: the same scripts, the image's programs."""
    (tmp_path / "config.toml").write_text(f'image_uri = "{IMAGE}"\n')
    env = {"DOCKER": DOCKER, "DOCKER_HOST": docker_env["DOCKER_HOST"]}
    train = launch("train", "--local", "--local-runner", "docker", "--data", str(tiny_data["train"].parent),
                   "--local-dir", str(tmp_path / "jobs"), "--job-name", "in-docker",
                   *[a for hp in FAST_HP.items() for a in ("--hp", "=".join(map(str, hp)))],
                   cwd=tmp_path, env=env, timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "(docker)" in train.stdout and "valid_acc=" in train.stdout
    model = tmp_path / "jobs" / "in-docker" / "model"
    assert (model / "model.json").exists()
    with local_endpoint(tmp_path, "deploy", "--local-runner", "docker", "--model-dir", str(model),
                        "--endpoint-name", "docker-dogs", env=env) as port:
        invoke = cli(port, "docker-dogs", sorted(tiny_data["test"].rglob("*.jpg"))[0])
        assert invoke.returncode == 0, invoke.stderr
        assert len(json.loads(invoke.stdout)["predictions"][0]["top_k"]) == 3
    assert "docker-dogs-serve" not in docker(docker_env, "ps", "-a", "--format", "{{.Names}}").stdout


def test_launch_local_on_two_hosts_in_containers(docker_env, tiny_data, tmp_path):
    """--hosts 2 --local-runner docker: two containers on the host network, one job (gloo on 127.0.0.1)."""
    (tmp_path / "config.toml").write_text(f'image_uri = "{IMAGE}"\n')
    env = {"DOCKER": DOCKER, "DOCKER_HOST": docker_env["DOCKER_HOST"]}
    train = launch("train", "--local", "--local-runner", "docker", "--hosts", "2", "--no-debugger",
                   "--data", str(tiny_data["train"].parent), "--local-dir", str(tmp_path / "jobs"),
                   "--job-name", "pair", *[a for hp in FAST_HP.items() for a in ("--hp", "=".join(map(str, hp)))],
                   cwd=tmp_path, env=env, timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "(docker, 2 hosts)" in train.stdout and "valid_acc=" in train.stdout
    assert (tmp_path / "jobs" / "pair" / "algo-1" / "model" / "model.json").exists()
    assert not list((tmp_path / "jobs" / "pair" / "algo-2" / "model").iterdir())
    assert "rank 1 of 2 (host algo-2" in (tmp_path / "jobs" / "pair" / "algo-2" / "job.log").read_text()


def test_a_network_isolated_job_trains_a_timm_backbone_from_its_staged_weights(docker_env, tiny_data, tmp_path):
    """--network-isolation --local-runner docker: the container has no network at all (--network=none);
    a ConvNeXt it could never download trains from the timm local-dir given as --pretrained."""
    import torch
    from image_classifier.vision import timm
    staged = tmp_path / "staged" / "convnext_atto.d2_in1k"
    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model("convnext_atto.d2_in1k"), staged, safe_serialization=True)
    (tmp_path / "config.toml").write_text(f'image_uri = "{IMAGE}"\n')
    env = {"DOCKER": DOCKER, "DOCKER_HOST": docker_env["DOCKER_HOST"]}
    common = ["train", "--local", "--local-runner", "docker", "--network-isolation", "--no-debugger",
              "--data", str(tiny_data["train"].parent), "--local-dir", str(tmp_path / "jobs"),
              *[a for hp in {**FAST_HP, "backbone": "convnext_atto", "epochs": 1}.items()
                for a in ("--hp", "=".join(map(str, hp)))]]
    refused = launch(*common, "--job-name", "no-weights", cwd=tmp_path, env=env, timeout=120)
    assert refused.returncode != 0 and "neither bundled in the image nor staged" in refused.stderr
    assert not (tmp_path / "jobs" / "no-weights").exists()  # refused before any container started
    train = launch(*common, "--job-name", "isolated", "--pretrained", str(staged), cwd=tmp_path, env=env, timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "timm local-dir" in train.stdout and "valid_acc=" in train.stdout
    manifest = json.loads((tmp_path / "jobs" / "isolated" / "model" / "model.json").read_text())
    assert manifest["architecture"]["timm"] == "convnext_atto.d2_in1k"
