"""A local stand-in for SageMaker Runtime's REST API in front of the image's `serve`, so the
unchanged AWS CLI / boto3 call works with --endpoint-url http://127.0.0.1:PORT:

    POST /endpoints/NAME/invocations  ->  POST <serve>/invocations

Headers pass as SageMaker passes them (Content-Type, Accept, X-Amzn-SageMaker-Custom-Attributes;
the answer carries x-Amzn-Invoked-Production-Variant). A container error comes back as SageMaker
reports it: HTTP 424 ModelError with OriginalStatusCode and OriginalMessage. Binds 127.0.0.1.
"""
from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")
FORWARD = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes")
VARIANT = "AllTraffic"


class Gateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, endpoints: dict[str, str], port: int = 0, host: str = "127.0.0.1"):
        self.endpoints = endpoints  # name -> serve's base URL
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
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = PATH.match(urllib.parse.urlsplit(self.path).path)
        if not match:
            return self._error(404, "UnknownOperationException", {"message": f"no such operation: POST {self.path}"})
        name = urllib.parse.unquote(match.group(1))
        backend = self.server.endpoints.get(name)
        if backend is None:
            return self._error(400, "ValidationError", {"message": f"Endpoint {name} not found."})
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARD}
        target = urllib.parse.urlsplit(backend)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            response = conn.getresponse()
            answer, status = response.read(), response.status
            content_type = response.getheader("Content-Type", "application/json")
            attributes = response.getheader("X-Amzn-SageMaker-Custom-Attributes")
        except OSError as e:
            return self._error(424, "ModelError", {"Message": f"the model container did not answer: {e}",
                                                   "OriginalStatusCode": 502, "OriginalMessage": str(e)})
        finally:
            conn.close()
        if 200 <= status < 300:
            out = {"Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": VARIANT}
            if attributes:
                out["X-Amzn-SageMaker-Custom-Attributes"] = attributes
            return self._send(200, answer, out)
        original = answer.decode("utf-8", "replace")
        kind = "client" if status < 500 else "server"
        self._error(424, "ModelError", {
            "Message": f'Received {kind} error ({status}) from primary with message "{original}".',
            "OriginalStatusCode": status, "OriginalMessage": original, "LogStreamArn": ""})
