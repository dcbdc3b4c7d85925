"""The real `serve` program (sagemaker-inference + MMS + our handler) over HTTP on 127.0.0.1."""
import base64
import concurrent.futures
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import psutil
import pytest
import requests
from PIL import Image

from conftest import CLASSES, CONTAINER, Server, program_env
from image_classifier.image_folder import class_name
from image_classifier.serving.model_state import READY_LINE

pytestmark = pytest.mark.slow


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def labelled_images(tiny_data):
    return [(p, class_name(p.parent.name)) for p in sorted(tiny_data["test"].rglob("*.jpg"))]


def assert_json_error(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == status and body["message"] and "Traceback" not in response.text
    return body["message"]


def test_ping_and_predictions_over_http(server, tiny_data):
    assert requests.get(server.url + "/ping").status_code == 200
    correct = 0
    for path, label in labelled_images(tiny_data):
        response = server.invoke(path.read_bytes())
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        [p] = response.json()["predictions"]
        assert len(p["top_k"]) == 3 and p["label"] == p["top_k"][0]["label"]
        correct += p["label"] == label
    assert correct / len(labelled_images(tiny_data)) > 0.5  # chance is 1/3


def test_every_image_content_type_and_mode(server, tiny_data):
    path, label = labelled_images(tiny_data)[0]
    image = Image.open(path)
    exif = Image.Exif()
    exif[0x0112] = 8
    cases = [(encode(image, "PNG"), "image/png"), (path.read_bytes(), "application/x-image"),
             (encode(image.convert("L")), "image/jpeg"), (encode(image.convert("CMYK")), "image/jpeg"),
             (encode(image.convert("RGBA"), "PNG"), "image/png"), (encode(image, "JPEG", exif=exif), "image/jpeg"),
             (encode(image, "WEBP"), "image/webp")]
    for body, content_type in cases:
        response = server.invoke(body, content_type)
        assert response.status_code == 200, (content_type, response.text)


def test_json_batch_top_k_and_probabilities(server, tiny_data):
    paths = [p for p, _ in labelled_images(tiny_data)[:3]]
    body = json.dumps({"instances": [base64.b64encode(p.read_bytes()).decode() for p in paths]})
    response = server.invoke(body.encode(), "application/json",
                             **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=2,probabilities=true"})
    preds = response.json()["predictions"]
    assert len(preds) == 3
    for p in preds:
        assert len(p["top_k"]) == 2
        assert set(p["probabilities"]) == {class_name(c) for c in CLASSES}
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-3


def test_bad_requests_are_json_4xx_and_the_server_stays_healthy(server, tiny_data):
    good = labelled_images(tiny_data)[0][0].read_bytes()
    huge = encode(Image.new("L", (9000, 9000)), "PNG")  # 81 megapixels in a few hundred kB
    cases = [
        (server.invoke(good, "text/plain"), 415, "unsupported content type"),
        (server.invoke(b"not an image", "image/jpeg"), 400, "not an image"),
        (server.invoke(good[: len(good) // 3], "image/jpeg"), 400, "truncated"),
        (server.invoke(b"", "image/jpeg"), 400, "empty"),
        (server.invoke(b"{bad json", "application/json"), 400, "not valid JSON"),
        (server.invoke(b'{"instances": ["***"]}', "application/json"), 400, "not valid base64"),
        (server.invoke(good, "image/jpeg", **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=-1"}), 400, "top_k"),
        (server.invoke(huge, "image/png"), 413, "pixels"),
        (server.invoke(os.urandom(7 * 1024 * 1024), "image/jpeg"), 413, "limit is 6291456"),
        (server.invoke(good, "image/jpeg", Accept="text/csv"), 406, "accept application/json"),
    ]
    for response, status, text in cases:
        assert text in assert_json_error(response, status)
    assert requests.get(server.url + "/ping").status_code == 200
    assert server.invoke(good).status_code == 200
    assert "Traceback" not in requests.get(server.url + "/nothing-here").text


def test_concurrent_requests(server, tiny_data):
    bodies = [p.read_bytes() for p, _ in labelled_images(tiny_data)] * 2
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda b: server.invoke(b).status_code, bodies))
    assert codes == [200] * len(bodies)


def test_only_the_front_listens_and_only_on_loopback(server):
    """MMS's inference and management APIs are on Unix sockets in serve's private run directory:
    the one TCP listener of the whole process tree is the front, on 127.0.0.1:PORT."""
    tree = [psutil.Process(server.process.pid)] + psutil.Process(server.process.pid).children(recursive=True)
    listening = [(c.laddr.ip, c.laddr.port) for p in tree for c in p.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert listening == [("127.0.0.1", server.port)]
    assert "Inference address: unix:" in server.output() and "Management address: unix:" in server.output()


def test_sigterm_stops_every_process(trained, tmp_path):
    (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path)
    srv.wait_healthy()
    tree = psutil.Process(srv.process.pid).children(recursive=True)
    assert any("java" in p.name() for p in tree) and any("model_service_worker" in " ".join(p.cmdline()) for p in tree)
    assert srv.stop() == 0
    time.sleep(0.5)
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


def test_requests_sent_before_the_model_is_loaded_wait_and_are_answered(trained, tmp_path):
    (tmp_path / "model").symlink_to(trained / "model")
    slow = tmp_path / "slow"
    slow.mkdir()
    # Delay the model's load in each MMS worker by 6 s (after the worker is up), as a large model would.
    (slow / "sitecustomize.py").write_text(
        "import sys, time, importlib.abc\n"
        "class Slow(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'image_classifier.artifact':\n"
        "            time.sleep(6)\n"
        "if any('model_service_worker' in a for a in sys.argv):\n"
        "    sys.meta_path.insert(0, Slow())\n")
    srv = Server(tmp_path, PYTHONPATH=slow)
    try:
        ping = srv.wait_answering()
        assert ping.status_code == 503 and ping.json()["status"] == "starting"  # not 200 before the model is in
        assert READY_LINE not in srv.output()
        image = encode(Image.new("RGB", (64, 64), "red"))
        assert srv.invoke(image).status_code == 200  # held until the model is in, then answered
        assert READY_LINE in srv.output()
        assert requests.get(srv.url + "/ping").status_code == 200
    finally:
        assert srv.stop() == 0


def test_a_broken_model_stops_serve_with_the_reason(trained, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text((trained / "model" / "model.json").read_text())
    (model / "model.pt").write_bytes(b"truncated")
    srv = Server(tmp_path)
    children = []
    while srv.process.poll() is None:  # the processes it starts, to check none outlives it
        with contextlib.suppress(psutil.NoSuchProcess):
            children += [p for p in psutil.Process(srv.process.pid).children(recursive=True) if p not in children]
        time.sleep(0.2)
    assert srv.process.returncode == 1
    assert f"serve: cannot serve {model}: model.pt cannot be read as saved weights" in srv.output(), srv.output()
    assert READY_LINE not in srv.output()
    assert [p.pid for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


def test_a_port_that_cannot_be_bound_is_refused_clearly(trained, tmp_path, server):
    (tmp_path / "model").symlink_to(trained / "model")
    out = subprocess.run([sys.executable, str(CONTAINER / "serve")], capture_output=True, text=True, timeout=60,
                         env=program_env(tmp_path, SAGEMAKER_BIND_TO_PORT=70000))
    assert out.returncode == 1 and "not a TCP port (1 to 65535)" in out.stderr
    taken = subprocess.run([sys.executable, str(CONTAINER / "serve")], capture_output=True, text=True, timeout=60,
                           env=program_env(tmp_path, SAGEMAKER_BIND_TO_PORT=server.port))
    assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{server.port}" in taken.stderr, taken.stderr


def test_help():
    out = subprocess.run([sys.executable, str(CONTAINER / "serve"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "SAGEMAKER_BIND_TO_PORT" in out.stdout


def test_multi_model_mode_loads_invokes_and_unloads(trained, tmp_path):
    """SAGEMAKER_MULTI_MODEL=true, as a SageMaker multi-model endpoint drives MMS's /models API."""
    models = tmp_path / "models"
    # A copy: a link to a folder outside the models root is refused (test_serve_hardening).
    shutil.copytree(trained / "model", models / "dogs" / "model")
    broken = models / "broken" / "model"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text((trained / "model" / "model.json").read_text())
    (broken / "model.pt").write_bytes(b"not weights")
    srv = Server(tmp_path, SAGEMAKER_MULTI_MODEL="true")
    try:
        srv.wait_healthy()  # healthy with no model loaded yet, as SageMaker expects
        load = requests.post(srv.url + "/models", json={"model_name": "dogs", "url": str(models / "dogs" / "model")},
                             timeout=120)
        assert load.status_code == 200, load.text
        assert [m["modelName"] for m in requests.get(srv.url + "/models").json()["models"]] == ["dogs"]
        image = encode(Image.new("RGB", (64, 64), "red"))
        answer = requests.post(srv.url + "/models/dogs/invoke", data=image,
                               headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["predictions"][0]["top_k"]) == 3
        bad = requests.post(srv.url + "/models/dogs/invoke", data=b"x", headers={"Content-Type": "text/plain"})
        assert bad.status_code == 415 and "Traceback" not in bad.text
        # A model that cannot load is an error at POST /models (MMS alone answers 200, then 500 to
        # every request), naming the reason; it is not listed, and the others keep working.
        failed = requests.post(srv.url + "/models", json={"model_name": "broken", "url": str(broken)}, timeout=120)
        assert failed.status_code == 400, failed.text
        assert "model 'broken' failed to load: model.pt cannot be read as saved weights" in failed.json()["message"]
        assert "Traceback" not in failed.text
        assert [m["modelName"] for m in requests.get(srv.url + "/models").json()["models"]] == ["dogs"]
        assert requests.post(srv.url + "/models/broken/invoke", data=image).status_code == 404
        assert requests.post(srv.url + "/models/dogs/invoke", data=image, headers={"Content-Type": "image/jpeg"},
                             timeout=60).status_code == 200
        assert requests.post(srv.url + "/models/nothing/invoke", data=image).status_code == 404
        assert requests.delete(srv.url + "/models/dogs").status_code == 200
        assert requests.get(srv.url + "/ping").status_code == 200
    finally:
        assert srv.stop() == 0


# What serve's MMS configuration changes from the toolkit's, and why (mms.py):
CHANGED = {"inference_address", "management_address",  # Unix sockets behind the front, not 0.0.0.0:8080
           "vmargs",  # a bounded heap
           "max_request_size"}  # the front enforces the payload limit; MMS only has to let it through


@pytest.mark.parametrize("multi", [False, True])
def test_mms_config_is_the_toolkits(tmp_path, monkeypatch, multi):
    """`serve` writes the configuration sagemaker-inference's own generator makes (it only avoids
    importing that module) but for the settings in CHANGED, plus preload_model."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the toolkit imports pkg_resources
        from sagemaker_inference import environment, model_server
    from image_classifier.serving import mms
    monkeypatch.setenv("SAGEMAKER_MULTI_MODEL", str(multi).lower())
    monkeypatch.setattr(model_server, "ENABLE_MULTI_MODEL", multi)  # the toolkit reads it at import
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "77")
    monkeypatch.setenv("SERVE_HOST", "127.0.0.1")
    monkeypatch.setattr(mms, "preload_safe", lambda: False)  # the one line the toolkit does not write
    toolkit = model_server._generate_mms_config_properties(environment.Environment(),
                                                           None if multi else mms.HANDLER)
    expected = toolkit.replace("$$SAGEMAKER_HANDLER$$", mms.HANDLER)
    ours = mms.config(tmp_path, 7 * 1024 * 1024).read_text()

    def unchanged(text):
        return sorted(line for line in text.splitlines() if line.partition("=")[0] not in CHANGED)
    assert unchanged(ours) == unchanged(expected)
    assert "default_workers_per_model=3" in ours and "default_response_timeout=77" in ours
    assert f"inference_address=unix:{tmp_path}/inference.sock" in ours
    assert f"management_address=unix:{tmp_path}/management.sock" in ours
    assert re.search(r"^vmargs=-XX:-UseContainerSupport -Xmx\d+m -XX:\+ExitOnOutOfMemoryError$", ours, re.M)
    assert str(mms.TOOLKIT_FILES / "log4j2.xml") == model_server.DEFAULT_MMS_LOG_FILE


def test_mms_preloads_the_model_only_where_a_fork_is_safe(tmp_path, monkeypatch):
    from image_classifier.serving import mms
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "preload_model=true" in mms.config(tmp_path, 1).read_text()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a fork after OpenMP ran on 2 threads hangs
    assert "preload_model" not in mms.config(tmp_path, 1).read_text()


def _concurrent(send, bodies):
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


@pytest.mark.parametrize("multi", [False, True])
def test_dynamic_batching_answers_each_request_as_alone(trained, tiny_data, tmp_path, server, multi):
    """SERVE_BATCH_SIZE: concurrent requests reach one worker together and are answered with one
    forward; each gets the answer it gets alone, and a bad one among them only its own 4xx."""
    bodies = [p.read_bytes() for p, _ in labelled_images(tiny_data)[:3]] + [b"not an image"]
    alone = [server.invoke(b) for b in bodies]
    env = dict(SERVE_BATCH_SIZE=4, SERVE_MAX_BATCH_DELAY_MS=2000)  # a single model: MMS's default workers
    if multi:
        env["SAGEMAKER_MODEL_SERVER_WORKERS"] = 1
        shutil.copytree(trained / "model", tmp_path / "models" / "dogs" / "model")  # no link to outside the root
        env["SAGEMAKER_MULTI_MODEL"] = "true"
    else:
        (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path, **env)
    try:
        srv.wait_healthy()
        path = "/invocations"
        if multi:
            load = requests.post(srv.url + "/models", timeout=120,
                                 json={"model_name": "dogs", "url": str(tmp_path / "models" / "dogs" / "model")})
            assert load.status_code == 200, load.text
            path = "/models/dogs/invoke"
        else:
            assert "model registered with batch_size=4, max_batch_delay=2000 ms" in srv.output()
        batched = _concurrent(lambda b: requests.post(srv.url + path, data=b, timeout=60,
                                                      headers={"Content-Type": "image/jpeg"}), bodies)
        for one, together in zip(alone[:3], batched[:3]):
            assert together.status_code == 200, together.text
            a, b = one.json()["predictions"][0], together.json()["predictions"][0]
            assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-3
        assert alone[3].status_code == 400 and assert_json_error(batched[3], 400) == alone[3].json()["message"]
        assert re.search(r"[234] requests answered with one forward of [234] images", srv.output()), srv.output()
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("value", ["0", "two", "-3"])
def test_a_bad_batch_size_stops_serve_with_the_reason(tmp_path, value):
    srv = Server(tmp_path, SERVE_BATCH_SIZE=value)  # refused before the model folder is looked at
    assert srv.process.wait(60) == 1
    assert f"serve: SERVE_BATCH_SIZE must be a positive whole number, got {value!r}" in srv.output()
