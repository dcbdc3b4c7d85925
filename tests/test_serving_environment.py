"""serving/environment.py: every serving variable's default, parsing and refusal, and that it is the
one place the serving side reads its environment (the MMS worker never imports the launcher)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from image_classifier.serving import environment
from image_classifier.serving.environment import SettingError

SERVING = ROOT / "container" / "image_classifier" / "serving"
NAMES = [v.name for v in environment.VARIABLES]


@pytest.fixture
def clean(monkeypatch):
    for name in [*NAMES, "SAGEMAKER_MAX_PAYLOAD_IN_MB", "SAGEMAKER_BASE_DIR", environment.STATE_DIR]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_defaults(clean):
    assert environment.port() == 8080 and environment.bind_host() == "0.0.0.0"
    assert not environment.multi_model() and environment.workers() is None
    assert environment.batching() == {"batch_size": 1, "max_batch_delay": 20}
    assert (environment.model_server_timeout(), environment.drain_seconds(), environment.unhealthy_seconds()) == \
        (60, 25, 30)
    assert environment.max_payload_bytes() == 6 * environment.MIB
    assert environment.max_pixels() == environment.max_request_pixels() == 40_000_000
    assert environment.max_decode_seconds() == 5 and environment.max_batch_images() == 64
    assert environment.precision() == "auto" and environment.graph() == "frozen"
    assert not environment.all_probabilities() and environment.single_threaded()
    assert environment.state_dir() is None
    environment.check()


def test_values_are_parsed(clean, tmp_path):
    for name, value in [("SAGEMAKER_BIND_TO_PORT", "9000"), ("SAGEMAKER_MULTI_MODEL", "TRUE"),
                        ("SERVE_BATCH_SIZE", "8"), ("SERVE_MAX_BATCH_DELAY_MS", " 5 "),
                        ("SAGEMAKER_MODEL_SERVER_WORKERS", "3"), ("SERVE_DRAIN_SECONDS", "2.5"),
                        ("SERVE_PRECISION", " BF16 "), ("SERVE_GRAPH", " Compiled "), ("SERVE_PROBABILITIES", "true"),
                        ("OMP_NUM_THREADS", "2"), ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "100"),
                        (environment.STATE_DIR, str(tmp_path))]:
        clean.setenv(name, value)
    assert environment.port() == 9000 and environment.multi_model() and environment.workers() == 3
    assert environment.batching() == {"batch_size": 8, "max_batch_delay": 5}
    assert environment.drain_seconds() == 2.5
    assert environment.precision() == "bf16" and environment.graph() == "compiled"
    assert environment.all_probabilities() and not environment.single_threaded()
    assert environment.max_payload_bytes() == 100 * environment.MIB  # batch transform's MaxPayloadInMB
    clean.setenv("MAX_PAYLOAD_BYTES", "1234")
    assert environment.max_payload_bytes() == 1234  # what `serve` resolved for its workers wins
    assert environment.state_dir() == tmp_path


def test_run_natively_serve_binds_to_loopback(clean):
    clean.setenv("SAGEMAKER_BASE_DIR", "/tmp/ml")
    assert environment.bind_host() == "127.0.0.1"
    clean.setenv("SERVE_HOST", "0.0.0.0")
    assert environment.bind_host() == "0.0.0.0"


@pytest.mark.parametrize("name, value, message", [
    ("SAGEMAKER_BIND_TO_PORT", "http", "SAGEMAKER_BIND_TO_PORT='http' is not a TCP port (1 to 65535)"),
    ("SAGEMAKER_BIND_TO_PORT", "70000", "SAGEMAKER_BIND_TO_PORT='70000' is not a TCP port"),
    ("SERVE_BATCH_SIZE", "0", "SERVE_BATCH_SIZE must be a positive whole number, got '0'"),
    ("SERVE_MAX_BATCH_DELAY_MS", "0.5", "SERVE_MAX_BATCH_DELAY_MS must be a positive whole number, got '0.5'"),
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "two", "SAGEMAKER_MODEL_SERVER_WORKERS must be a positive whole number"),
    ("SERVE_DRAIN_SECONDS", "-1", "SERVE_DRAIN_SECONDS must be a positive number of seconds, got '-1'"),
    ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "2.5", "SAGEMAKER_MODEL_SERVER_TIMEOUT must be a positive whole number"),
    ("MAX_IMAGE_PIXELS", "1e6", "MAX_IMAGE_PIXELS must be a positive whole number, got '1e6'"),
    ("MAX_PAYLOAD_BYTES", "-5", "MAX_PAYLOAD_BYTES must be a positive whole number"),
    ("SERVE_PRECISION", "int8", "SERVE_PRECISION must be one of auto, fp32, bf16, bf16-autocast, fp16; got 'int8'"),
    ("SERVE_GRAPH", "jit", "SERVE_GRAPH must be one of frozen, compiled; got 'jit'"),
])
def test_a_bad_value_is_refused_by_name(clean, name, value, message):
    clean.setenv(name, value)
    with pytest.raises(SettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        environment.check()


def test_what_serve_hands_its_workers(clean, tmp_path):
    clean.setenv("PYTHONPATH", "/elsewhere")
    handed = environment.for_workers(tmp_path, 1234, "/opt/program")
    assert handed["PYTHONPATH"] == "/opt/program:/elsewhere" and handed["MAX_PAYLOAD_BYTES"] == "1234"
    assert handed[environment.STATE_DIR] == handed["TMPDIR"] == str(tmp_path)
    for name, value in handed.items():
        clean.setenv(name, value)
    assert environment.state_dir() == tmp_path and environment.max_payload_bytes() == 1234


def test_every_variable_is_documented_once_and_in_the_help(clean):
    assert len(set(NAMES)) == len(NAMES)
    table = environment.markdown_table()
    assert table in (ROOT / "docs" / "SERVING.md").read_text()  # `python -m ...environment` output, verbatim
    help_text = subprocess.run([sys.executable, str(ROOT / "container" / "serve"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert all(name in help_text and f"`{name}`" in table for name in NAMES)


def environment_reads(path: Path) -> list[str]:
    """`os.environ` and `os.getenv` uses in a module, as 'line: source'."""
    tree = ast.parse(path.read_text())
    return [f"{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
            and node.attr in ("environ", "getenv", "putenv")]


def test_only_environment_py_reads_the_environment():
    """The rest of serving asks environment.py; `serve` only hands its workers what it resolved."""
    found = {p.name: environment_reads(p) for p in SERVING.glob("*.py") if p.name != "environment.py"}
    assert {name: reads for name, reads in found.items() if reads} == {"server.py": [found["server.py"][0]]}
    assert "os.environ.update(environment.for_workers(" in (SERVING / "server.py").read_text()
    assert environment_reads(SERVING / "environment.py")  # the check above can see a read


def test_the_worker_does_not_import_the_launcher():
    """MMS imports the handler module in every worker: it must not pull in `serve`'s own modules."""
    code = ("import sys, image_classifier.serving.handler_service; "
            "print(sorted(m for m in sys.modules if m.startswith('image_classifier.serving.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for launcher in ("server", "mms", "front", "model_store"):
        assert f"image_classifier.serving.{launcher}'" not in loaded
    assert "image_classifier.serving.environment'" in loaded
