"""A local stand-in for SageMaker Runtime's REST API in front of the image's `serve`, so the
unchanged AWS CLI / boto3 call works with --endpoint-url http://127.0.0.1:PORT:

    POST /endpoints/NAME/invocations  ->  POST <serve>/invocations

Headers pass as SageMaker passes them (Content-Type, Accept, X-Amzn-SageMaker-Custom-Attributes;
the answer carries x-Amzn-Invoked-Production-Variant). A container error comes back as SageMaker
reports it: HTTP 424 ModelError with OriginalStatusCode and OriginalMessage. Binds 127.0.0.1.

A multi-model endpoint (`serve` with SAGEMAKER_MULTI_MODEL=true) is driven as SageMaker drives
one: the request's TargetModel (X-Amzn-SageMaker-Target-Model, 'dogs.tar.gz' or 'dogs') is
loaded through the container's POST /models on first use, then invoked at /models/NAME/invoke.
Unlike SageMaker, nothing is unloaded under memory pressure.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")
# SageMaker Runtime's limits for real-time endpoints: the InvokeEndpoint Body's max in the service
# model (6 MB), and 60 s for the container to answer (dg/realtime-endpoints-test-endpoints.html).
MAX_BODY = 6 * 1024 * 1024
INVOCATION_SECONDS = 60
FORWARD = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes")
VARIANT = "AllTraffic"


TARGET_MODEL = "x-amzn-sagemaker-target-model"


@dataclasses.dataclass
class Backend:
    """One endpoint: serve's base URL; for a multi-model endpoint, its models by name
    (each the model folder's path as `serve` sees it)."""
    url: str
    models: dict[str, str] | None = None
    loaded: set = dataclasses.field(default_factory=set)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def target(self, name: str) -> str | None:
        """TargetModel -> model folder: 'dogs.tar.gz' names the artifact SageMaker would fetch."""
        return self.models.get(name) or self.models.get(name.removesuffix(".tar.gz"))


class LoadFailed(Exception):
    def __init__(self, status: int, answer: bytes):
        super().__init__(status)
        self.status, self.answer = status, answer


class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, endpoints: dict[str, Backend], port: int = 0, host: str = "127.0.0.1",
                 invocation_seconds: float = INVOCATION_SECONDS):
        self.endpoints, self.invocation_seconds = endpoints, invocation_seconds
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="gateway", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 and the AWS CLI expect

    def log_message(self, fmt, *args):  # quiet; serve logs each request
        pass

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(),
                   {"Content-Type": "application/json", "x-amzn-ErrorType": f"{code}:"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:  # refused before the container sees it, as SageMaker does
            self.close_connection = True
            return self._error(413, "ValidationError", {"message": f"Request body of {length} bytes is over the "
                                                        f"{MAX_BODY}-byte limit of InvokeEndpoint."})
        body = self.rfile.read(length)
        match = PATH.match(urllib.parse.urlsplit(self.path).path)
        if not match:
            return self._error(404, "UnknownOperationException", {"message": f"no such operation: POST {self.path}"})
        name = urllib.parse.unquote(match.group(1))
        backend = self.server.endpoints.get(name)
        if backend is None:
            return self._error(400, "ValidationError", {"message": f"Endpoint {name} not found."})
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARD}
        target = self.headers.get(TARGET_MODEL)
        path = "/invocations"
        if backend.models is None and target:
            return self._error(400, "ValidationError", {"message": f"Endpoint {name} is not a multi-model endpoint "
                                                        "and does not take TargetModel."})
        if backend.models is not None:
            if not target:
                return self._error(400, "ValidationError", {"message": f"Endpoint {name} is a multi-model "
                                                            "endpoint: TargetModel is required."})
            if backend.target(target) is None:
                return self._error(400, "ValidationError", {"message": f"Failed to download model data for "
                                                            f"TargetModel {target}: no such model."})
            try:
                path = self._load(backend, target)
            except OSError as e:
                return self._container_down(e)
            except LoadFailed as e:  # the container's answer, as SageMaker passes it on
                return self._model_error(e.status, e.answer)
        try:
            status, answer, content_type, attributes = _post(backend.url, path, body, headers,
                                                             timeout=self.server.invocation_seconds)
        except TimeoutError:
            return self._error(424, "ModelError", {
                "Message": f"Your invocation timed out while waiting for a response from container primary "
                           f"(SageMaker waits {self.server.invocation_seconds:g} s).", "OriginalStatusCode": 0,
                "OriginalMessage": "", "LogStreamArn": ""})
        except OSError as e:
            return self._container_down(e)
        if 200 <= status < 300:
            out = {"Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": VARIANT}
            if attributes:
                out["X-Amzn-SageMaker-Custom-Attributes"] = attributes
            return self._send(200, answer, out)
        self._model_error(status, answer)

    def _load(self, backend: Backend, target: str) -> str:
        """The invoke path of TargetModel, loading it into the container first if needed."""
        model = "m" + hashlib.sha1(target.removesuffix(".tar.gz").encode()).hexdigest()[:16]  # MMS-safe name
        with backend.lock:
            if model not in backend.loaded:
                request = json.dumps({"model_name": model, "url": backend.target(target)}).encode()
                status, answer, _, _ = _post(backend.url, "/models", request, {"Content-Type": "application/json"},
                                             timeout=300)
                if status != 200:
                    raise LoadFailed(status, answer)
                backend.loaded.add(model)
        return f"/models/{model}/invoke"

    def _container_down(self, e: OSError) -> None:
        self._error(424, "ModelError", {"Message": f"the model container did not answer: {e}",
                                        "OriginalStatusCode": 502, "OriginalMessage": str(e)})

    def _model_error(self, status: int, answer: bytes) -> None:
        original = answer.decode("utf-8", "replace")
        kind = "client" if status < 500 else "server"
        self._error(424, "ModelError", {
            "Message": f'Received {kind} error ({status}) from primary with message "{original}".',
            "OriginalStatusCode": status, "OriginalMessage": original, "LogStreamArn": ""})


def _post(base: str, path: str, body: bytes, headers: dict, timeout: float = 60):
    """POST to serve: (status, body, content type, custom attributes)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return (response.status, response.read(), response.getheader("Content-Type", "application/json"),
                response.getheader("X-Amzn-SageMaker-Custom-Attributes"))
    finally:
        conn.close()
