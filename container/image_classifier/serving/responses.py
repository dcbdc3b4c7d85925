"""The JSON shape of every error `serve` answers, whether its front or a worker answers it: the
shape MMS itself uses ({"code", "type", "message"}), so clients parse one format."""
from __future__ import annotations

import json
from http import HTTPStatus

from . import environment

JSON_TYPE = "application/json"
JSONLINES_TYPE = "application/jsonlines"  # SageMaker's name for JSON Lines (batch transform, Clarify)


def media_type(header: str | None) -> str:
    """'Image/JPEG; charset=x' -> 'image/jpeg'."""
    return (header or "").split(";")[0].strip().lower()


def error_body(status: int, message: str) -> str:
    return json.dumps({"code": status, "type": HTTPStatus(status).phrase.replace(" ", ""), "message": message})


def payload_too_large(size: int | None = None) -> str:
    """The 413 message for a body over the limit (size unknown for a chunked body not read to its end)."""
    limit = environment.max_payload_bytes()
    return (f"body is {size} bytes" if size is not None else f"body is over {limit} bytes") + \
        f"; the limit is {limit} (MAX_PAYLOAD_BYTES)"
