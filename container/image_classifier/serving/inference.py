"""The handler functions SageMaker's inference toolkit calls: model_fn, input_fn, predict_fn,
output_fn. Images are decoded and transformed with the same functions training evaluates with.

Request errors raise GenericInferenceToolkitError(status, message); the transformer turns them
into JSON without a traceback.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import warnings

import torch
from PIL import Image, UnidentifiedImageError
from sagemaker_inference.errors import GenericInferenceToolkitError

from .. import artifact
from ..models import batch_to
from .limits import max_batch_images, max_payload_bytes, max_pixels
from ..preprocessing import ImageTooLarge, Preprocessing, decode, eval_transform

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")  # and any other image/*
JSON_TYPE = "application/json"
DEFAULT_TOP_K = 5

# Pillow's own bomb check warns below 2x its limit and raises above; ours is explicit.
Image.MAX_IMAGE_PIXELS = None


def error(status: int, message: str) -> GenericInferenceToolkitError:
    return GenericInferenceToolkitError(status, message)


@dataclasses.dataclass
class Model:
    network: torch.nn.Module
    manifest: dict
    classes: list[str]
    preprocessing: Preprocessing
    transform: object
    device: torch.device


@dataclasses.dataclass
class Batch:
    images: torch.Tensor
    top_k: int
    probabilities: bool


@dataclasses.dataclass
class Prediction:
    probabilities: torch.Tensor  # (n, classes)
    top_k: int
    full: bool


def model_fn(model_dir: str) -> Model:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, manifest = artifact.load(model_dir, device)
    pre = Preprocessing.from_json(manifest["preprocessing"])
    log.info("loaded %s with %d classes from %s", manifest["backbone"], manifest["num_classes"], model_dir)
    # No warm-up request here: answering one before MMS forks its workers took 100 ms off each
    # worker's first request but cost 20% of their throughput (docs/PERFORMANCE.md).
    return Model(network, manifest, manifest["class_names"], pre, eval_transform(pre), device)


def parse_options(custom_attributes: str | None) -> dict:
    """CustomAttributes 'top_k=3,probabilities=true' (',' or ';' separated) -> options."""
    options = {}
    for part in (custom_attributes or "").replace(";", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() in ("top_k", "probabilities"):
            options[key.strip()] = value.strip()
    return options


def _options(raw: dict, num_classes: int) -> tuple[int, bool]:
    top_k = raw.get("top_k", DEFAULT_TOP_K)
    try:
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise error(400, f"top_k must be a positive integer, got {top_k!r}") from None
    full = raw.get("probabilities", False)
    full = full if isinstance(full, bool) else str(full).lower() in ("true", "1", "yes")
    return min(top_k, num_classes), full


def _image_tensor(body: bytes, model: Model, what: str = "body") -> torch.Tensor:
    if not body:
        raise error(400, f"{what} is empty; send the image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = decode(bytes(body), model.preprocessing, max_pixels=max_pixels())
            return model.transform(image)
    except ImageTooLarge as e:
        raise error(413, f"{what}: {e}") from None
    except Image.DecompressionBombError as e:
        raise error(413, f"{what}: {e}") from None
    except UnidentifiedImageError:
        raise error(400, f"{what} is not an image that can be decoded (JPEG, PNG, WebP, BMP, GIF, TIFF ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise error(400, f"{what} could not be decoded: {e}") from None


def input_fn(body: bytes, content_type: str, options: dict | None = None, model: Model | None = None) -> Batch:
    """Decode a request: raw image bytes, or JSON {"instances": [base64 or {"b64": ...}], ...}."""
    options = dict(options or {})
    if len(body) > max_payload_bytes():
        raise error(413, f"body is {len(body)} bytes; the limit is {max_payload_bytes()} (MAX_PAYLOAD_BYTES)")
    media = (content_type or "").split(";")[0].strip().lower()
    if media in IMAGE_TYPES or media.startswith("image/"):
        tensors = [_image_tensor(body, model)]
    elif media == JSON_TYPE:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise error(400, f"body is not valid JSON: {e}") from None
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise error(400, 'JSON body must be {"instances": [<base64 image> or {"b64": <base64 image>}, ...]}')
        if len(instances) > max_batch_images():
            raise error(413, f"{len(instances)} images in one request; the limit is {max_batch_images()}")
        options.update({k: payload[k] for k in ("top_k", "probabilities") if k in payload})
        tensors = []
        for i, item in enumerate(instances):
            b64 = item.get("b64") if isinstance(item, dict) else item
            if not isinstance(b64, str):
                raise error(400, f"instances[{i}] must be a base64 string or {{\"b64\": <base64 string>}}")
            try:
                raw = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise error(400, f"instances[{i}] is not valid base64") from None
            tensors.append(_image_tensor(raw, model, f"instances[{i}]"))
    else:
        raise error(415, f"unsupported content type {content_type!r}; send image/jpeg, image/png, "
                         f"application/x-image or application/json")
    top_k, full = _options(options, len(model.classes))
    return Batch(torch.stack(tensors), top_k, full)


@torch.inference_mode()
def predict_fn(batch: Batch, model: Model) -> Prediction:
    logits = model.network(batch_to(batch.images, model.device))
    return Prediction(torch.softmax(logits.float(), dim=1).cpu(), batch.top_k, batch.probabilities)


def output_fn(prediction: Prediction, accept: str, model: Model | None = None) -> tuple[str, str]:
    media = (accept or JSON_TYPE).split(";")[0].strip().lower()
    if media not in (JSON_TYPE, "*/*", "application/*"):
        raise error(406, f"cannot answer with {accept!r}; accept application/json")
    results = []
    for probs in prediction.probabilities:
        values, indices = probs.topk(prediction.top_k)
        top = [{"label": model.classes[i], "index": int(i), "probability": round(float(p), 6)}
               for p, i in zip(values.tolist(), indices.tolist())]
        result = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
        if prediction.full:
            result["probabilities"] = {c: round(float(p), 6) for c, p in zip(model.classes, probs.tolist())}
        results.append(result)
    return json.dumps({"predictions": results}), JSON_TYPE
