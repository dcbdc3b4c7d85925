"""The local SageMaker Runtime gateway enforces SageMaker's limits before and around the real `serve`."""
import io
import json

import pytest
import requests
from PIL import Image

from launch.local.gateway import MAX_BODY, Backend, Gateway

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway(server):
    gw = Gateway({"dogs": Backend(server.url)}, invocation_seconds=0.2)
    gw.start()
    yield gw
    gw.shutdown()
    gw.server_close()


def invoke(gw, body: bytes, content_type="image/jpeg"):
    return requests.post(f"{gw.url}/endpoints/dogs/invocations", data=body,
                         headers={"Content-Type": content_type}, timeout=30)


def test_a_body_over_6_mb_is_a_413_validation_error(gateway):
    answer = invoke(gateway, b"\0" * (MAX_BODY + 1))
    assert answer.status_code == 413 and answer.headers["x-amzn-ErrorType"] == "ValidationError:"
    assert "6291456-byte limit" in answer.json()["message"]


def test_an_answer_slower_than_the_limit_is_a_model_error(gateway):
    buf = io.BytesIO()
    Image.new("RGBA", (5400, 5400)).save(buf, "PNG")  # ~0.5 s of decoding (RGBA counts 4/3): over 0.2 s
    answer = invoke(gateway, buf.getvalue(), "image/png")
    assert answer.status_code == 424 and answer.headers["x-amzn-ErrorType"] == "ModelError:"
    assert "timed out while waiting for a response from container primary" in json.loads(answer.text)["Message"]
    small = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(small, "JPEG")
    assert invoke(gateway, small.getvalue()).status_code == 200  # and the endpoint goes on
