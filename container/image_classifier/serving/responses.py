"""The JSON shape of every error `serve` answers, whether its front or a worker answers it: the
shape MMS itself uses ({"code", "type", "message"}), so clients parse one format."""
from __future__ import annotations

import json
from http import HTTPStatus

JSON_TYPE = "application/json"
JSONLINES_TYPE = "application/jsonlines"  # SageMaker's name for JSON Lines (batch transform, Clarify)


def media_type(header: str | None) -> str:
    """'Image/JPEG; charset=x' -> 'image/jpeg'."""
    return (header or "").split(";")[0].strip().lower()


def error_body(status: int, message: str) -> str:
    return json.dumps({"code": status, "type": HTTPStatus(status).phrase.replace(" ", ""), "message": message})
