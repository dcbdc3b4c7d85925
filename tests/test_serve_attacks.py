"""Issue 23's attacks on the real `serve`, two copies at once, while good traffic flows: each is
refused before it costs a worker, a worker that overruns its deadline is killed and replaced, /ping
says what the workers can do, and nothing `serve` started outlives it."""
import base64
import io
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from PIL import Image

import hostile_images as hostile
from conftest import Server
from image_classifier.serving import mms

pytestmark = pytest.mark.slow


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    return buf.getvalue()


class Traffic(threading.Thread):
    """A good JPEG every 0.2 s and /ping every 0.1 s until stopped, each answer kept."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stopped = url, threading.Event()
        self.answers: list[tuple[int, float]] = []  # (status, seconds) of the good requests
        self.pings: list[tuple[float, int, str]] = []  # (when, status, message)

    def run(self):
        good, body = ThreadPoolExecutor(4), jpeg()

        def send():
            start = time.monotonic()
            r = requests.post(self.url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120)
            self.answers.append((r.status_code, time.monotonic() - start))
        tick = 0
        while not self.stopped.is_set():
            if tick % 2 == 0:
                good.submit(send)
            r = requests.get(self.url + "/ping", timeout=10)
            self.pings.append((time.monotonic(), r.status_code, r.json().get("message", "")))
            tick += 1
            time.sleep(0.1)
        good.shutdown(wait=True)

    def stop(self):
        self.stopped.set()
        self.join(180)


def json_error(response, status) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in response.text
    return response.json()["message"]


ATTACKS = [  # (name, body, content type, status, words of the message)
    ("progressive JPEG, 400,000 scans", hostile.progressive_jpeg_repeated_scans, "image/jpeg", 413, "scans"),
    ("ICO holding a 60000x60000 PNG", hostile.ico_with_huge_png, "image/x-icon", 400, "served format"),
    ("64 PNGs with EXIF after the pixels", lambda: hostile.amplified_json(64, 6300, late_exif=True),
     "application/json", 413, "MAX_REQUEST_PIXELS"),
    ("GIF with a 4.4 MB comment", hostile.gif_with_huge_comment, "image/gif", 413, "comments"),
    ("TIFF whose EXIF tags ask 4.5 GB", lambda: hostile.amplified_exif("tiff"), "image/tiff", 413, "bytes of values"),
    ("JPEG whose EXIF tags ask 4.5 GB: EXIF kept from Pillow", hostile.amplified_exif, "image/jpeg", 200,
     "predictions"),
    ("JPEG whose MPF index is 800,000 rationals: kept from Pillow", hostile.jpeg_with_mpf, "image/jpeg", 200,
     "predictions"),
    ("run-length BMP, 36 Mpx in 24 KB", hostile.rle_bmp, "image/bmp", 413, "MAX_REQUEST_PIXELS"),
    ("JPEG with 6 MB of fill bytes", hostile.jpeg_with_fill_bytes, "image/jpeg", 413, "fill bytes"),
]


def test_two_copies_of_each_attack_leave_good_traffic_and_ping_alone(trained, tmp_path):
    (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS=2)
    try:
        srv.wait_healthy()
        traffic = Traffic(srv.url)
        traffic.start()
        time.sleep(1)
        with ThreadPoolExecutor(2) as pool:
            for name, make, content_type, status, words in ATTACKS:
                body = make()
                copies = [pool.submit(srv.invoke, body, content_type) for _ in range(2)]
                for copy in copies:
                    answer = copy.result()
                    assert words in (json_error(answer, status) if status != 200 else answer.text), name
        time.sleep(1)
        traffic.stop()
        assert traffic.answers and all(status == 200 for status, _ in traffic.answers), traffic.answers
        assert max(seconds for _, seconds in traffic.answers) < 10, traffic.answers  # a hang, not a speed check
        assert {status for _, status, _ in traffic.pings} == {200}
        assert "Traceback" not in srv.output()
    finally:
        assert srv.stop() == 0


def slow_png(side: int = 14000) -> bytes:
    """Admitted under raised pixel limits, and seconds of decoding (an RGBA PNG: 5 s on 2 cores)."""
    return hostile.deep_png(side, 8)


BIG_LIMITS = dict(MAX_IMAGE_PIXELS=500_000_000, MAX_REQUEST_PIXELS=100_000_000_000)


def test_a_worker_past_its_decode_deadline_is_killed_replaced_and_ping_says_so(trained, tmp_path):
    (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS=2, MAX_DECODE_SECONDS=3, **BIG_LIMITS)
    try:
        srv.wait_healthy()
        deadline = time.monotonic() + 30
        while len(before := mms.python_processes(srv.process.pid)[1]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        traffic = Traffic(srv.url)
        traffic.start()
        body = slow_png()
        with ThreadPoolExecutor(2) as pool:
            copies = [pool.submit(srv.invoke, body, "image/png") for _ in range(2)]
            messages = [json_error(copy.result(), 413) for copy in copies]
        for message in messages:
            assert "took over 3 s (MAX_DECODE_SECONDS); its worker was stopped and replaced" in message
        deadline = time.monotonic() + 30
        while len(mms.python_processes(srv.process.pid)[1]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        traffic.stop()
        assert all(not p.is_running() for p in before)  # the held workers are gone ...
        assert len(mms.python_processes(srv.process.pid)[1]) == 2  # ... and replaced
        assert all(status == 200 for status, _ in traffic.answers), traffic.answers
        held = [message for _, status, message in traffic.pings if status == 503]
        assert any("held by one request for over 2 s" in m for m in held), traffic.pings
        statuses = [status for _, status, _ in traffic.pings]
        first_503 = statuses.index(503)
        assert 200 not in statuses[first_503:statuses.index(200, first_503)]  # 503 from held to replaced ...
        assert statuses[-1] == 200  # ... then 200 again
        # 2 when both overran within one tick of the watch, else 1 and then 1 more (seen in CI)
        assert re.search(r"replacing the [12] model worker\(s\) stopped for overrunning", srv.output())
        assert srv.output().count("killed it, the model server starts another") == 2
        assert srv.process.poll() is None
    finally:
        assert srv.stop() == 0


def test_sigterm_during_a_decode_stops_every_process_serve_started(trained, tmp_path):
    (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS=2, MAX_DECODE_SECONDS=600, SERVE_DRAIN_SECONDS=3,
                 **BIG_LIMITS)
    try:
        srv.wait_healthy()
        body = hostile.amplified_json(30, 20000)  # about 30 s of decoding per request
        pool = ThreadPoolExecutor(2)
        for _ in range(2):
            pool.submit(srv.invoke, body, "application/json")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = mms.python_processes(srv.process.pid)[1]
            if len(workers) == 2 and all(w.cpu_percent(interval=0.2) > 50 for w in workers):
                break
        else:
            pytest.fail("the workers never got the requests")
        started = psutil.Process(srv.process.pid).children(recursive=True)
        assert len(started) >= 4  # the MMS launcher, Java, the listener, two workers
        launcher = psutil.Process(srv.process.pid).children()[0]
        assert all(os.getpgid(p.pid) == launcher.pid for p in started)  # MMS's own group, which stop_tree ends
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(30) == 0
        gone, alive = psutil.wait_procs(started, timeout=1)
        assert alive == [], [(p.pid, p.name()) for p in alive]
        pool.shutdown(wait=True)
    finally:
        srv.stop()


def test_a_forward_past_the_model_server_timeout_is_a_504_and_its_worker_is_replaced(trained, tmp_path):
    """The predict phase's deadline: 512 Grad-CAM explanations (seconds of backward passes) under a
    1 s SAGEMAKER_MODEL_SERVER_TIMEOUT; decoding the 512 small JPEGs takes a fraction of it."""
    (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS=1, SAGEMAKER_MODEL_SERVER_TIMEOUT=1, MAX_BATCH_IMAGES=512)
    try:
        srv.wait_healthy()
        deadline = time.monotonic() + 30
        while not (before := mms.python_processes(srv.process.pid)[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        body = json.dumps({"instances": [base64.b64encode(jpeg()).decode()] * 512}).encode()
        answer = srv.invoke(body, "application/json", **{"X-Amzn-SageMaker-Custom-Attributes": "explain=gradcam"})
        message = json_error(answer, 504)
        assert "did not answer within 1 s (SAGEMAKER_MODEL_SERVER_TIMEOUT); its worker was stopped" in message
        deadline = time.monotonic() + 30
        while requests.get(srv.url + "/ping").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.invoke(jpeg()).status_code == 200  # a new worker answers
        assert not before[0].is_running() and "(predict); killed it" in srv.output()
    finally:
        assert srv.stop() == 0
