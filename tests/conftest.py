"""Shared fixtures: generated data sets, the real programs as subprocesses, a loopback-only
network guard, and the rule that nothing may skip under CI=true."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from launch.local import programs  # installed (editable) by `make venv`
from imagegen import make_splits  # tests/ is on sys.path: pytest's rootdir conftest

ROOT = Path(__file__).resolve().parents[1]
CONTAINER = ROOT / "container"

IMAGEWOOF = (ROOT.parent / "shared" / "data" / "imagewoof10").resolve()
CLASSES = ["001.Red_box", "002.Green_disc", "003.Blue_box"]
IN_CI = os.environ.get("CI") == "true"


# --- network: tests talk to 127.0.0.1 only --------------------------------------------------
_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"test network guard: connection to {host} refused (loopback only)")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def loopback_only():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


# --- skips: every skip says why; under CI=true none is allowed -----------------------------
def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if IN_CI and skipped and exitstatus == 0:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; everything must run in CI", red=True)
        session.exitstatus = 1


# --- real photos: imagewoof10 in ../shared -------------------------------------------------------
@pytest.fixture(scope="session")
def imagewoof():
    if not IMAGEWOOF.is_dir():
        if IN_CI:
            pytest.fail(f"{IMAGEWOOF} is missing; CI must have ../shared beside the checkout")
        pytest.skip(reason=f"{IMAGEWOOF} is not here (it lives in ../shared/data)")
    return IMAGEWOOF


# --- programs --------------------------------------------------------------------------------
program_env = programs.program_env
free_port = programs.free_port


def run_train(base: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(programs.program("train"), env=program_env(base, **env),
                          capture_output=True, text=True, timeout=timeout)


def tensorboard_scalars(folder: Path, digits: int = 6) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a folder's TensorBoard event files, read by smdebug's reader (an
    independent one, which checks every record's CRC)."""
    from smdebug.core.tfevent.event_file_reader import EventFileReader
    found = {}
    for events in sorted(Path(folder).glob("events.out.tfevents.*")):
        for step, summary in EventFileReader(str(events)).read_summaries(check="full"):
            for value in summary.value:
                found.setdefault(value.tag, []).append((step, round(value.simple_value, digits)))
    return found


def failure_reason(base: Path) -> str:
    return (base / "output" / "failure").read_text().strip()


class Server(programs.Serve):
    """The real `serve` program, with a requests helper for tests."""

    def invoke(self, body: bytes, content_type: str = "image/jpeg", **headers) -> requests.Response:
        return requests.post(self.url + "/invocations", data=body,
                             headers={"Content-Type": content_type, **headers}, timeout=60)

    def wait_answering(self, timeout: float = 60) -> requests.Response:
        """The first answer of /ping, whatever its status (503 while the model loads)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                return requests.get(self.url + "/ping", timeout=2)
            except requests.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError(self.output())


# --- data and a trained model ----------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """3 generated classes: train 12, valid 4, test 4 images each (JPEG)."""
    return make_splits(tmp_path_factory.mktemp("tiny"), CLASSES, {"train": 12, "valid": 4, "test": 4})


FAST_HP = {"backbone": "efficientnet_lite0", "epochs": 2, "batch-size": 8, "image-size": 64,
           "num-workers": 0, "lr": 0.01}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_data) -> Path:
    """One real `train` run; its /opt/ml tree (model/ inside) is shared by the serving tests."""
    base = programs.make_tree(tmp_path_factory.mktemp("trained"), tiny_data, FAST_HP)
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    (base / "train.log").write_text(result.stdout + result.stderr)  # what the container really printed
    return base


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """A model folder (model.pt, model.json) of a random 3-class resnet18 at 32 px."""
    from image_classifier import artifact, models
    from image_classifier.preprocessing import Preprocessing
    d = tmp_path_factory.mktemp("small-model")
    net, built, source = models.build("resnet18", "none", 3)
    artifact.save(d, net, "resnet18", built.architecture, ["A", "B", "C"], ["001.A", "002.B", "003.C"],
                  Preprocessing(32, 36, (0.5,) * 3, (0.5,) * 3, "bilinear"), {}, {}, source)
    return d


@pytest.fixture(scope="session")
def small_model(small_model_dir):
    """The handler's Model for small_model_dir: in-process handler tests."""
    from image_classifier.serving import inference
    return inference.model_fn(str(small_model_dir))


@pytest.fixture(scope="session")
def server(trained, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    (base / "model").symlink_to(trained / "model")
    srv = Server(base)
    srv.cold_start_seconds = srv.wait_healthy()
    yield srv
    srv.stop()


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class _NoSleep:
    """The time module for the SDK's session only, without its waits (patching time.sleep itself
    would also take the waits out of everything else in the test, selenium's included)."""

    def __getattr__(self, name):
        import time
        return getattr(time, name)

    @staticmethod
    def sleep(seconds):
        pass


@pytest.fixture
def sm(monkeypatch):
    """A stubbed SageMaker client for the launch scripts (see sagemaker_stub.py)."""
    from sagemaker_stub import StubbedSageMaker
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    for var in ("AWS_PROFILE", "IC_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    import sagemaker.session
    monkeypatch.setattr(sagemaker.session, "time", _NoSleep())  # the SDK polls every 30 s
    return StubbedSageMaker()
