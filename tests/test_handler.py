"""The handler functions in-process (the HTTP path is in test_serve_e2e)."""
import base64
import io
import json
import shutil

import pytest
from PIL import Image
from sagemaker_inference.errors import GenericInferenceToolkitError

from image_classifier import artifact
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


def test_a_manifest_whose_class_names_disagree_with_the_model_is_refused(tmp_path, small_model_dir):
    folder = shutil.copytree(small_model_dir, tmp_path / "model")
    manifest = json.loads((folder / "model.json").read_text())
    manifest["class_names"] = ["A", "B"]  # a hand-edited manifest: 3 outputs, 2 names
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(artifact.ArtifactError, match="names 2 classes for a model with 3 outputs"):
        inference.model_fn(str(folder))


def test_jsonlines_answers_one_line_per_image(model):
    body = json.dumps({"instances": [base64.b64encode(jpeg()).decode()] * 3}).encode()
    batch = inference.input_fn(body, "application/json", model=model)
    out, ctype = inference.output_fn(inference.predict_fn(batch, model), "application/jsonlines", model=model)
    lines = out.splitlines()
    assert ctype == "application/jsonlines" and len(lines) == 3 and out.endswith("\n")
    as_json = predict(model, body, "application/json")
    assert [json.loads(line)["label"] for line in lines] == [p["label"] for p in as_json]


@pytest.mark.parametrize("accept, expected", [
    ("application/jsonlines", "application/jsonlines"), ("application/jsonlines, application/json", "application/json"),
    ("application/json;q=0.5, application/jsonlines", "application/jsonlines"), ("*/*", "application/json"),
    ("application/*;q=0.1, application/jsonlines;q=0", "application/json"),
])
def test_accept_chooses_between_json_and_jsonlines(accept, expected):
    assert inference.answer_type(accept) == expected


def test_serve_probabilities_puts_the_full_vector_in_every_answer(model, monkeypatch):
    monkeypatch.setenv("SERVE_PROBABILITIES", "true")
    [p] = predict(model, jpeg())
    assert list(p["probabilities"]) == model.classes and len(p["scores"]) == len(model.classes)
    assert p["scores"] == [p["probabilities"][c] for c in model.classes]
    assert p["scores"][p["top_k"][0]["index"]] == p["probability"]


def test_gradcam_explanation_is_the_input_size_and_names_the_class(model):
    image = Image.new("RGB", (90, 60), "white")
    image.paste(Image.new("RGB", (30, 30), "black"), (10, 10))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    [p] = predict(model, buf.getvalue(), "image/png", {"explain": "gradcam"})
    explanation = p["explanation"]
    assert explanation["method"] == "gradcam" and explanation["label"] == p["label"]
    heat = Image.open(io.BytesIO(base64.b64decode(explanation["heatmap_png"])))
    assert heat.size == (90, 60) == (explanation["width"], explanation["height"]) and heat.mode == "L"
    box = explanation["box"]
    assert 0 <= box["left"] < box["right"] <= 90 and 0 <= box["top"] < box["bottom"] <= 60
    [named] = predict(model, buf.getvalue(), "image/png", {"explain": "gradcam", "explain_class": "B"})
    assert named["explanation"]["label"] == "B" and named["label"] == p["label"]  # the answer itself is unchanged


@pytest.mark.parametrize("options, message", [
    ({"explain": "lime"}, "explain must be one of gradcam, got 'lime'"),
    ({"explain": "gradcam", "explain_class": "Z"}, "explain_class 'Z' is not one of the model's classes (A, B, C)"),
    ({"explain_class": "A"}, "explain_class needs explain=gradcam"),
])
def test_bad_explain_options_are_400(model, options, message):
    with pytest.raises(GenericInferenceToolkitError) as e:
        inference.input_fn(jpeg(), "image/jpeg", options=options, model=model)
    assert e.value.status_code == 400 and e.value.message == message
