"""The handler functions in-process (the HTTP path is in test_serve_e2e)."""
import base64
import io
import json

import pytest
from PIL import Image
from sagemaker_inference.errors import GenericInferenceToolkitError

from image_classifier import artifact, models
from image_classifier.preprocessing import Preprocessing
from image_classifier.serving import inference


@pytest.fixture
def model(small_model):
    return small_model


def jpeg(size=(40, 30), colour="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def status_of(call) -> int:
    with pytest.raises(GenericInferenceToolkitError) as e:
        call()
    return e.value.status_code


def predict(model, body, content_type="image/jpeg", options=None, accept="application/json"):
    batch = inference.input_fn(body, content_type, options=options, model=model)
    out, ctype = inference.output_fn(inference.predict_fn(batch, model), accept, model=model)
    assert ctype == "application/json"
    return json.loads(out)["predictions"]


def test_image_gives_top_k_that_sum_to_one_with_the_rest(model):
    [p] = predict(model, jpeg(), "image/jpeg", {"probabilities": "true"})
    assert [t["label"] for t in p["top_k"]] and len(p["top_k"]) == 3  # k capped at the class count
    assert p["label"] == p["top_k"][0]["label"]
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-4
    probs = [t["probability"] for t in p["top_k"]]
    assert probs == sorted(probs, reverse=True)


def test_top_k_option_and_content_type_parameters(model):
    [p] = predict(model, jpeg(), "application/x-image; charset=binary", {"top_k": "1"})
    assert len(p["top_k"]) == 1 and "probabilities" not in p


def test_json_batch_of_base64_images(model):
    body = json.dumps({"instances": [base64.b64encode(jpeg()).decode(),
                                     {"b64": base64.b64encode(jpeg(colour="blue")).decode()}], "top_k": 2})
    preds = predict(model, body.encode(), "application/json")
    assert len(preds) == 2 and all(len(p["top_k"]) == 2 for p in preds)


def test_custom_attributes_parsing():
    assert inference.parse_options("top_k=3; probabilities=true,other=x") == {"top_k": "3", "probabilities": "true"}
    assert inference.parse_options(None) == {}


@pytest.mark.parametrize("body, content_type, options, status", [
    (b"abc", "text/csv", None, 415),
    (b"", "image/jpeg", None, 400),
    (b"garbage", "image/png", None, 400),
    (jpeg()[:100], "image/jpeg", None, 400),
    (b"{not json", "application/json", None, 400),
    (b'{"instances": []}', "application/json", None, 400),
    (b'{"instances": ["%%%"]}', "application/json", None, 400),
    (b'{"instances": [5]}', "application/json", None, 400),
    (b"x", "image/jpeg", {"top_k": "zero"}, 400),
])
def test_bad_requests_get_4xx(model, body, content_type, options, status):
    assert status_of(lambda: inference.input_fn(body, content_type, options=options, model=model)) == status


def test_limits_give_413(model, monkeypatch):
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1000")
    assert status_of(lambda: inference.input_fn(jpeg((100, 100)), "image/jpeg", model=model)) == 413
    monkeypatch.setenv("MAX_PAYLOAD_BYTES", "10")
    assert status_of(lambda: inference.input_fn(jpeg(), "image/jpeg", model=model)) == 413
    monkeypatch.delenv("MAX_PAYLOAD_BYTES")
    monkeypatch.setenv("MAX_BATCH_IMAGES", "1")
    two = json.dumps({"instances": [base64.b64encode(jpeg()).decode()] * 2}).encode()
    assert status_of(lambda: inference.input_fn(two, "application/json", model=model)) == 413


def test_unsupported_accept_is_406(model):
    batch = inference.input_fn(jpeg(), "image/jpeg", model=model)
    assert status_of(lambda: inference.output_fn(inference.predict_fn(batch, model), "text/csv", model=model)) == 406


def test_a_manifest_whose_class_names_disagree_with_the_model_is_refused(tmp_path):
    net, _, source = models.build("resnet18", "none", 3)
    artifact.save(tmp_path, net, "resnet18", ["A", "B", "C"], ["001.A", "002.B", "003.C"],
                  Preprocessing(32, 36, (0.5,) * 3, (0.5,) * 3, "bilinear"), {}, {}, source)
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["class_names"] = ["A", "B"]  # a hand-edited manifest: 3 outputs, 2 names
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(artifact.ArtifactError, match="names 2 classes for a model with 3 outputs"):
        inference.model_fn(str(tmp_path))
