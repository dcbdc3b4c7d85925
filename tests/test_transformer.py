"""transformer.py in-process, with MMS's own Context as its worker builds one: each request of a
batch keeps its own errors, the rest are answered with one forward, and a model that cannot load
answers every request with a JSON 500."""
import io
import json

from mms.context import Context
from mms.service import Service
from PIL import Image

from image_classifier.serving import inference
from image_classifier.serving.transformer import ImageTransformer


def jpeg(color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "JPEG")
    return buf.getvalue()


def batch(model_dir, *requests) -> tuple[list[dict], Context]:
    """(body, headers) pairs as MMS's worker receives them off its socket, through MMS's own
    unpacking (Service.retrieve_data_for_inference): the data and the context it hands the handler."""
    wire = [{"requestId": str(i).encode(), "parameters": [{"name": "body", "value": body, "contentType": b""}],
             "headers": [{"name": k.encode(), "value": v.encode()} for k, v in headers.items()]}
            for i, (body, headers) in enumerate(requests)]
    headers, data, _ = Service.retrieve_data_for_inference(wire)
    ctx = Context("model", str(model_dir), {}, len(requests), None, "1.1")
    ctx.request_processor = headers
    return data, ctx


def status(ctx, i) -> int:
    return ctx.get_response_status(i)[0]


def test_a_batch_keeps_each_requests_errors_and_forwards_once(small_model_dir, monkeypatch):
    forwards = []
    real = inference.predict_many
    monkeypatch.setattr(inference, "predict_many", lambda batches, model: forwards.append(len(batches))
                        or real(batches, model))
    image = {"Content-Type": "image/jpeg"}
    data, ctx = batch(small_model_dir, (jpeg(), image), (jpeg(), {**image, "Accept": "text/csv"}),
                      (b"not an image", image), (b"", image),
                      (jpeg("blue"), {**image, "X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}))
    answers = ImageTransformer().transform(data, ctx)
    assert forwards == [2]  # the two good requests, in one forward
    assert [status(ctx, i) for i in range(5)] == [200, 406, 400, 400, 200]
    first, last = json.loads(answers[0])["predictions"][0], json.loads(answers[4])["predictions"][0]
    assert len(first["top_k"]) == 3 and len(last["top_k"]) == 2 and first["label"] in ("A", "B", "C")
    for i in (1, 2, 3):
        error = json.loads(answers[i])
        assert set(error) == {"code", "type", "message"} and error["code"] == status(ctx, i)
        assert "Traceback" not in error["message"]
    assert ctx.get_response_content_type(1) == inference.JSON_TYPE


def test_a_model_that_cannot_load_answers_every_request_with_a_500(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    data, ctx = batch(tmp_path, (jpeg(), {"Content-Type": "image/jpeg"}), (jpeg(), {"Content-Type": "image/jpeg"}))
    answers = ImageTransformer().transform(data, ctx)
    assert [status(ctx, i) for i in range(2)] == [500, 500]
    assert all(json.loads(a)["message"].startswith("model failed to load: ") for a in answers)
