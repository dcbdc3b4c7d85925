"""HTTP that never reaches the front's routes, answered in the JSON error shape.

aiohttp answers a request its parser refuses (a header or request line over its 8190-byte
limits, too many headers, malformed HTTP) with plain text, and logs a traceback; it has no hook
for that (aio-libs/aiohttp#3287). JsonErrorRunner is web.AppRunner with a connection handler
that answers those with `responses.error_body` and one WARNING line.
"""
from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from .responses import JSON_TYPE, error_body

log = logging.getLogger("image_classifier.serve")


def json_error(status: int, message: str, **headers) -> web.Response:
    return web.Response(status=status, text=error_body(status, message), content_type=JSON_TYPE, headers=headers)


def refused(exc: HttpProcessingError, handler: web.RequestHandler) -> tuple[int, str]:
    """Status and message for HTTP that aiohttp's parser refused, with aiohttp's limits (8190 bytes).
    aiohttp raises LineTooLong for a request line and a header alike; its excerpt tells them apart:
    the target ('/...', C parser) or 'METHOD /...' (pure-Python parser) for the request line."""
    if isinstance(exc, LineTooLong):
        head = bytes(exc.args[0][:40]) if exc.args and isinstance(exc.args[0], (bytes, bytearray)) else b""
        method, space, target = head.partition(b" ")
        if head.startswith(b"/") or (space and method.isalpha() and method.isupper() and target.startswith(b"/")):
            return 414, f"the request line (method, path and query) is over {handler.max_line_size} bytes"
        return 431, (f"a request header is over {handler.max_field_size} bytes (name and value together); "
                     "SageMaker allows CustomAttributes of up to 1024 characters")
    if "too many headers" in exc.message.lower():
        return 431, f"the request has more than {handler.max_headers} header fields"
    return 400, "malformed HTTP request: " + " ".join(str(exc.message).split())[:200]


class JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, answering the errors that never reach the app or its middlewares
    (HTTP its parser refuses, a handler's uncaught exception) with the JSON error shape. aiohttp has
    no hook for them (aio-libs/aiohttp#3287); its own answer is plain text with a logged traceback."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):  # the client's fault: one line, no traceback
            status, message = refused(exc, self)
            log.warning("refused a request from %s: %d %s", request.remote, status, message)
        else:  # a bug or a timeout: aiohttp's log (with the traceback) and checks, a JSON body
            super().handle_error(request, status, exc, message)
            message = "the request failed in the front; see the endpoint's log"
        response = json_error(status, message)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:  # aiohttp's own, with the handler above
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """web.AppRunner whose connections are JsonErrorHandlers (same arguments, same limits)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app's startup, then aiohttp's own Server
        return JsonErrorServer(server.request_handler, request_factory=server.request_factory,
                               handler_cancellation=server.handler_cancellation, loop=server._loop,
                               **server._kwargs)
