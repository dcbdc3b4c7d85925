"""The real `serve` attacked and broken on purpose: model folders that carry code, MMS's management
API, dead workers, requests that cost more than they weigh, and HTTP that MMS answered wrongly."""
import base64
import io
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from PIL import Image

import hostile_images
from conftest import Server
from image_classifier.serving import mms

pytestmark = pytest.mark.slow

EVIL_CODE = ("import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"
             "def handle(data, context):\n    return ['pwned']\n")


def jpeg(colour="red", size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def one_bit_png(side: int) -> bytes:
    """Few bytes, many pixels: the costliest decode per byte seen (1-bit PNG to RGB)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def json_error(response, status):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["code"] == status and "Traceback" not in response.text
    return body["message"]


def plant_code(folder, marker):
    """Everything that made MMS or the toolkit run code from a model folder."""
    (folder / "MAR-INF").mkdir()
    (folder / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"runtime": "python", "model": {"modelName": "model", "handler": "evil:handle"}}))
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    (folder / "accimage.py").write_text(EVIL_CODE.format(marker=str(marker)))  # torchvision tries to import it
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(EVIL_CODE.format(marker=str(marker)))
    (folder / "code" / "requirements.txt").write_text("./nothing-to-install\n")


def copy_model(trained, folder):
    folder.mkdir(parents=True)
    for name in ("model.pt", "model.json"):
        (folder / name).write_bytes((trained / "model" / name).read_bytes())
    return folder


def busy(process, timeout: float = 30) -> None:
    """Wait until PROCESS computes (a request in its hands)."""
    deadline = time.monotonic() + timeout
    while process.cpu_percent(interval=0.05) < 50:
        assert time.monotonic() < deadline, "the worker never got a request"


def test_a_model_folder_with_a_handler_and_an_archive_manifest_runs_none_of_it(trained, tmp_path):
    marker = tmp_path / "ran"
    plant_code(copy_model(trained, tmp_path / "model"), marker)
    srv = Server(tmp_path)
    try:
        srv.wait_healthy()
        answer = srv.invoke(jpeg())
        assert answer.status_code == 200 and answer.json()["predictions"][0]["top_k"]  # our handler, not 'pwned'
        assert not marker.exists()
        [line] = [text for text in srv.output().splitlines() if "ignoring" in text]
        assert "MAR-INF" in line and "evil.py" in line and "code" in line and "model folders are data" in line
        assert "pip" not in srv.output().lower()
    finally:
        assert srv.stop() == 0


def test_no_management_route_answers_on_a_single_model_endpoint(server, trained):
    folder = str(trained / "model")
    calls = [("POST", f"/models?url={folder}&model_name=x"), ("POST", "/models"), ("GET", "/models"),
             ("GET", "/models/model"), ("DELETE", "/models/model"), ("PUT", "/models/model?min_worker=0"),
             ("POST", "/models/model/invoke"), ("GET", "/api-description"), ("OPTIONS", "/"),
             ("POST", "/predictions/model")]
    for method, path in calls:
        response = requests.request(method, server.url + path, json={"model_name": "x", "url": folder}, timeout=10)
        assert "no such route" in json_error(response, 404), (method, path)
        assert folder not in response.text and "workers" not in response.text
    assert requests.get(server.url + "/ping").status_code == 200
    assert server.invoke(jpeg()).status_code == 200  # the model is still there, with its workers


def test_multi_model_loads_only_local_folders_under_the_model_root(trained, tmp_path):
    root = tmp_path / "models"
    copy_model(trained, root / "dogs" / "model")
    marker = tmp_path / "ran"
    plant_code(copy_model(trained, root / "planted" / "model"), marker)
    outside = copy_model(trained, tmp_path / "elsewhere")
    (root / "linked").symlink_to(outside)  # a model folder that is a link to outside the root
    pt_linked = copy_model(trained, root / "pt-linked" / "model")
    (pt_linked / "model.pt").unlink()
    (pt_linked / "model.pt").symlink_to(outside / "model.pt")  # a used file linked to outside
    srv = Server(tmp_path, SAGEMAKER_MULTI_MODEL="true")
    try:
        srv.wait_healthy()

        def load(**body):
            return requests.post(srv.url + "/models", json=body, timeout=120)
        refused = [
            (load(model_name="a", url="http://127.0.0.1:1/model.mar"), "never a URL"),
            (load(model_name="a", url=f"file://{root / 'dogs' / 'model'}"), "never a URL"),
            (load(model_name="a", url=str(outside)), "not a folder under"),
            (load(model_name="a", url=f"{root}/../elsewhere"), "not a folder under"),
            (load(model_name="a", url="models/dogs/model"), "not a folder under"),
            (load(model_name="../a", url=str(root / "dogs" / "model")), "model_name"),
            (load(model_name="a", url=str(root / "missing")), "is not a folder"),
            (load(model_name="a", url=str(root / "linked")), f"url {str(root / 'linked')!r} is not a folder under"),
            (load(model_name="a", url=str(pt_linked)), f"model.pt ({pt_linked / 'model.pt'}) is not under"),
            (requests.post(srv.url + f"/models?url={outside}&model_name=a", timeout=10), "JSON"),
        ]
        for response, text in refused:
            assert text in json_error(response, 400)
        assert load(model_name="dogs", url=str(root / "dogs" / "model")).status_code == 200
        assert "already loaded" in json_error(load(model_name="dogs", url=str(root / "dogs" / "model")), 409)
        assert load(model_name="planted", url=str(root / "planted" / "model")).status_code == 200
        answer = requests.post(srv.url + "/models/planted/invoke", data=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["top_k"]
        assert not marker.exists() and "ignoring" in srv.output()

        listing = requests.get(srv.url + "/models").json()
        assert listing == {"models": [{"modelName": "dogs", "modelUrl": str(root / "dogs" / "model")},
                                      {"modelName": "planted", "modelUrl": str(root / "planted" / "model")}]}
        assert requests.get(srv.url + "/models/dogs").json() == listing["models"][0]  # no workers, no pids
        assert "PUT" in json_error(requests.put(srv.url + "/models/dogs?min_worker=0"), 405)
        assert "not loaded" in json_error(requests.post(srv.url + "/models/nothing/invoke", data=jpeg()), 404)
        assert "no such route" in json_error(requests.post(srv.url + "/invocations", data=jpeg()), 404)
        assert requests.delete(srv.url + "/models/dogs").status_code == 200
        assert "not loaded" in json_error(requests.get(srv.url + "/models/dogs"), 404)
        assert requests.post(srv.url + "/models/planted/invoke", data=jpeg(),
                             headers={"Content-Type": "image/jpeg"}).status_code == 200
    finally:
        assert srv.stop() == 0


def test_multi_model_with_a_relative_base_dir(trained, tmp_path, monkeypatch):
    """SAGEMAKER_BASE_DIR=base from the working directory: the models root is resolved (once), so
    the absolute folder SageMaker sends is found under it."""
    folder = copy_model(trained, tmp_path / "base" / "models" / "dogs" / "model")
    monkeypatch.chdir(tmp_path)  # serve inherits it
    srv = Server(tmp_path, SAGEMAKER_MULTI_MODEL="true", SAGEMAKER_BASE_DIR="base")
    try:
        srv.wait_healthy()
        answer = requests.post(srv.url + "/models", json={"model_name": "dogs", "url": str(folder)}, timeout=120)
        assert answer.status_code == 200, answer.text
        answer = requests.post(srv.url + "/models/dogs/invoke", data=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["top_k"]
    finally:
        assert srv.stop() == 0


def test_dead_workers_are_retried_reported_and_end_serve(trained, tmp_path):
    (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path, SERVE_UNHEALTHY_SECONDS=4)
    try:
        srv.wait_healthy()
        # A worker killed while requests are in flight: MMS forks a new one; the request it held
        # is answered by another worker.
        deadline = time.monotonic() + 30  # with preload, /ping turns 200 when the listener has loaded
        while not (workers := mms.python_processes(srv.process.pid)[1]) and time.monotonic() < deadline:
            time.sleep(0.05)  # the model, just before it forks the workers
        body = one_bit_png(5000)  # ~0.25 s of decoding each: requests are in flight when it dies
        with ThreadPoolExecutor(6) as pool:
            answers = [pool.submit(srv.invoke, body, "image/png") for _ in range(6)]
            busy(workers[0])
            workers[0].kill()
            codes = [a.result().status_code for a in answers]
        assert codes == [200] * 6
        assert "a model worker died during a request; sending it to another" in srv.output()
        # The listener and every worker killed: MMS cannot fork new ones. /ping turns 503 with the
        # reason, requests get a JSON 503 at once, and serve exits 1 so the container is replaced.
        listener, workers = mms.python_processes(srv.process.pid)
        for p in [listener, *workers]:
            p.kill()
        deadline = time.monotonic() + 10
        while requests.get(srv.url + "/ping").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        ping = requests.get(srv.url + "/ping")
        assert ping.status_code == 503 and "no model worker can answer" in ping.json()["message"]
        assert "no model worker can answer" in json_error(srv.invoke(jpeg()), 503)
        assert srv.process.wait(30) == 1
        assert "no model worker could answer for 4 s" in srv.output()
    finally:
        srv.stop()


def test_a_request_over_the_work_budget_is_refused_and_others_go_on(server):
    png = base64.b64encode(one_bit_png(6300)).decode()  # 39.7 Mpx: each under the per-image limit
    amplified = json.dumps({"instances": [png] * 64}).encode()  # 2.5 Gpx in 0.42 MB
    message = json_error(server.invoke(amplified, "application/json"), 413)
    assert "2540160000 pixels" in message and "MAX_REQUEST_PIXELS" in message
    assert server.invoke(jpeg()).status_code == 200


@pytest.mark.parametrize("headers, status", [
    ({}, 200),  # no Content-Type at all
    ({"Content-Type": "application/x-www-form-urlencoded"}, 200),  # curl -d / urllib's default
    ({"Content-Type": "image/jpeg", "Accept": "text/html;q=0.9, application/json;q=0.5"}, 200),
    ({"Content-Type": "image/jpeg", "Accept": "*/*"}, 200),
    ({"Content-Type": "image/jpeg", "Accept": "application/json, */*"}, 200),
    ({"Content-Type": "image/jpeg", "Accept": "application/json; charset=utf-8"}, 200),
    ({"Content-Type": "image/jpeg", "Accept": "application/json;q=0, text/csv"}, 406),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
])
def test_content_type_and_accept_forms(server, headers, status):
    response = requests.post(server.url + "/invocations", data=jpeg(), headers=headers, timeout=30)
    if status == 200:
        assert response.status_code == 200 and response.json()["predictions"], response.text
    else:
        json_error(response, status)


def test_malformed_requests_get_a_clean_json_status(server):
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    wrapped = base64.encodebytes(jpeg()).decode()  # `base64` wraps at 76 columns
    assert "\n" in wrapped.strip()
    ok = server.invoke(json.dumps({"instances": [wrapped]}).encode(), "application/json")
    assert ok.status_code == 200, ok.text
    assert "nested too deeply" in json_error(server.invoke(deep, "application/json"), 400)
    assert "not an image" in json_error(requests.post(server.url + "/invocations", data=b"hello"), 400)
    assert "limit is 6291456" in json_error(server.invoke(b"\0" * (30 * 1024 * 1024)), 413)
    get = requests.get(server.url + "/invocations")
    assert "use POST" in json_error(get, 405) and get.headers["Allow"] == "POST"
    assert requests.head(server.url + "/ping").status_code == 200
    assert requests.get(server.url + "/ping").json() == {"status": "Healthy"}


LONG = "a" * 9000  # over aiohttp's 8190-byte limits on the request line and on a header field
REFUSED_HTTP = [  # (raw request, status, words of the message): all refused by aiohttp's parser
    (f"GET /ping HTTP/1.1\r\nHost: x\r\nAccept: application/json, {LONG}\r\n\r\n", 431, "header is over 8190"),
    (f"GET /ping HTTP/1.1\r\nX-Amzn-SageMaker-Custom-Attributes: a={LONG}\r\n\r\n", 431, "CustomAttributes"),
    (f"GET /{LONG} HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request line (method, path and query) is over 8190"),
    ("GET /ping HTTP/1.1\r\n" + "".join(f"X-H{i}: 1\r\n" for i in range(200)) + "\r\n", 431, "more than 128"),
    ("GET /ping HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed HTTP request"),
    ("BLAH\r\n\r\n", 400, "malformed HTTP request"),
]


def raw_request(port: int, request: str) -> tuple[int, dict, bytes]:
    """One request on its own connection, read to the server's close: status, headers, body."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def json_shape(status: int, headers: dict, body: bytes, expected: int) -> str:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json"), headers
    answer = json.loads(body)
    assert set(answer) == {"code", "type", "message"} and answer["code"] == expected, answer
    return answer["message"]


def test_oversized_header_in_process_gets_the_json_shape(caplog):
    """The front's runner against aiohttp's parser, in process: each refusal is the JSON shape with
    one WARNING line and nothing from aiohttp's logger; a handler's bug is a JSON 500."""
    import asyncio

    from aiohttp import web

    from image_classifier.serving import http_errors

    async def bug(request):
        raise RuntimeError("a bug")

    async def ping(request):
        return http_errors.json_error(418, "reached the app")

    async def main():
        app = web.Application()
        app.router.add_get("/ping", ping)
        app.router.add_get("/bug", bug)
        runner = http_errors.JsonErrorRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            def ask(request):
                return asyncio.get_running_loop().run_in_executor(None, raw_request, port, request)
            answers = [await ask(request) for request, _, _ in REFUSED_HTTP]
            normal = await ask("GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            with caplog.at_level("CRITICAL", logger="aiohttp.server"):  # its traceback of the bug, expected
                failed = await ask("GET /bug HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return answers, normal, failed
        finally:
            await runner.cleanup()

    with caplog.at_level("INFO"):
        answers, normal, failed = asyncio.run(main())
    for (_, status, words), answer in zip(REFUSED_HTTP, answers):
        assert words in json_shape(*answer, status)
    assert "reached the app" in json_shape(*normal, 418)
    assert "Traceback" not in json_shape(*failed, 500) and b"a bug" not in failed[2]
    refusals = [r for r in caplog.records if r.name == "image_classifier.serve"]
    assert len(refusals) == len(REFUSED_HTTP) and all(r.levelname == "WARNING" and not r.exc_info for r in refusals)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 20]


def test_oversized_headers_and_request_line_get_the_json_shape(server):
    """aiohttp refuses these before the app sees them: still the JSON shape, one log line each, no
    traceback; the endpoint goes on."""
    logged = len(server.output())
    accept = requests.post(server.url + "/invocations", data=jpeg(), timeout=30,
                           headers={"Content-Type": "image/jpeg", "Accept": "application/json, " + LONG})
    assert "a request header is over 8190 bytes" in json_error(accept, 431)
    attributes = server.invoke(jpeg(), **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=3," + LONG})
    assert "CustomAttributes of up to 1024 characters" in json_error(attributes, 431)
    path = requests.post(server.url + "/" + LONG, data=jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert "request line" in json_error(path, 414)
    port = int(server.url.rsplit(":", 1)[1])
    for request, status, words in REFUSED_HTTP[3:]:
        assert words in json_shape(*raw_request(port, request), status)
    deadline = time.monotonic() + 10
    while server.output()[logged:].count("refused a request") < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.output()[logged:]
    assert log.count("WARNING image_classifier.serve: refused a request") == 6, log
    assert "Traceback" not in log and "Error handling request" not in log, log
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200
    assert server.invoke(jpeg()).status_code == 200


def test_the_jvm_heap_is_bounded(server):
    [java] = [p for p in psutil.Process(server.process.pid).children(recursive=True) if p.name() == "java"]
    assert any(a.startswith("-Xmx") for a in java.cmdline()) and "-XX:+ExitOnOutOfMemoryError" in java.cmdline()


def test_sigterm_drains_requests_in_flight(trained, tmp_path):
    (tmp_path / "model").symlink_to(trained / "model")
    srv = Server(tmp_path)
    srv.wait_healthy()
    body = hostile_images.deep_png(5000, 8)  # 2 workers, 6 RGBA PNGs of ~0.4 s: some wait in MMS's queue
    started = threading.Barrier(7)

    def send():
        session = requests.Session()
        session.get(srv.url + "/ping")  # connected before SIGTERM
        started.wait()
        return session.post(srv.url + "/invocations", data=body, headers={"Content-Type": "image/png"}, timeout=60)
    with ThreadPoolExecutor(6) as pool:
        answers = [pool.submit(send) for _ in range(6)]
        started.wait()
        time.sleep(0.3)
        srv.process.send_signal(signal.SIGTERM)
        codes = [a.result().status_code for a in answers]
    assert codes == [200] * 6
    assert srv.process.wait(30) == 0
    assert "draining" in srv.output()
    with pytest.raises(requests.ConnectionError):
        requests.get(srv.url + "/ping", timeout=2)
    srv.stop()
