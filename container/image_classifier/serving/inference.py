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
import time
import warnings

import torch
from PIL import Image, UnidentifiedImageError
from sagemaker_inference.errors import GenericInferenceToolkitError

from .. import artifact
from . import precision
from ..models import batch_to
from ..preprocessing import ImageTooLarge, Preprocessing, decoded_pixels, eval_transform, open_image, to_rgb
from .limits import (max_batch_images, max_decode_seconds, max_payload_bytes, max_pixels, max_request_pixels,
                     payload_too_large)
from .responses import JSON_TYPE, media_type

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")  # and any other image/*
DEFAULT_TOP_K = 5

# Pillow's own bomb check warns below 2x its limit and raises above; ours (limits.py) is explicit.
Image.MAX_IMAGE_PIXELS = None


def error(status: int, message: str) -> GenericInferenceToolkitError:
    return GenericInferenceToolkitError(status, message)


@dataclasses.dataclass
class Model:
    network: torch.nn.Module  # fp32 images in, fp32 logits out (precision.Served)
    manifest: dict
    classes: list[str]
    preprocessing: Preprocessing
    transform: object
    device: torch.device
    precision: str = "fp32"


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
    name, why = precision.choose(precision.requested(), device, manifest)
    served = precision.prepare(network, name, device, pre.image_size)
    log.info("loaded %s with %d classes from %s; serving in %s (%s)", manifest["backbone"], manifest["num_classes"],
             model_dir, name, why)
    # No warm-up request here: answering one before MMS forks its workers took 100 ms off each
    # worker's first request but cost 20% of their throughput (docs/PERFORMANCE.md).
    return Model(served, manifest, manifest["class_names"], pre, eval_transform(pre), device, name)


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


def _open(body: bytes, what: str) -> Image.Image:
    """Lazily opened (headers only) and checked against the per-image limit."""
    if not body:
        raise error(400, f"{what} is empty; send the image bytes")
    try:
        return open_image(bytes(body), max_pixels=max_pixels())
    except ImageTooLarge as e:
        raise error(413, f"{what}: {e}") from None
    except UnidentifiedImageError:
        raise error(400, f"{what} is not an image that can be decoded (JPEG, PNG, WebP, BMP, GIF, TIFF ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise error(400, f"{what} could not be decoded: {e}") from None


def _tensor(image: Image.Image, model: Model, what: str) -> torch.Tensor:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.transform(to_rgb(image, draft_size=model.preprocessing.resize_size))
    except (OSError, SyntaxError, ValueError) as e:
        raise error(400, f"{what} could not be decoded: {e}") from None


def _decode_all(bodies: list[tuple[bytes, str]], model: Model) -> list[torch.Tensor]:
    """Every image's size is known (from its header) before any is decoded, so a request over the
    work budget is refused at once, not after the worker has spent seconds on it."""
    images = [(_open(body, what), what) for body, what in bodies]
    total = sum(decoded_pixels(image, model.preprocessing) for image, _ in images)
    if total > max_request_pixels():
        raise error(413, f"the request's images decode to {total} pixels in all; the limit is "
                         f"{max_request_pixels()} per request (MAX_REQUEST_PIXELS): send fewer or smaller images")
    deadline = time.monotonic() + max_decode_seconds()
    tensors = []
    for i, (image, what) in enumerate(images):
        if i and time.monotonic() > deadline:
            raise error(413, f"decoding took over {max_decode_seconds():g} s (MAX_DECODE_SECONDS) before {what}; "
                             "send fewer or smaller images")
        tensors.append(_tensor(image, model, what))
    return tensors


def _instances(body: bytes) -> tuple[list[tuple[bytes, str]], dict]:
    """JSON {"instances": [base64 or {"b64": base64}], "top_k"?, "probabilities"?} -> images, options."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(400, f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise error(400, "body is not valid JSON: nested too deeply") from None
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise error(400, 'JSON body must be {"instances": [<base64 image> or {"b64": <base64 image>}, ...]}')
    if len(instances) > max_batch_images():
        raise error(413, f"{len(instances)} images in one request; the limit is {max_batch_images()}")
    bodies = []
    for i, item in enumerate(instances):
        b64 = item.get("b64") if isinstance(item, dict) else item
        if not isinstance(b64, str):
            raise error(400, f"instances[{i}] must be a base64 string or {{\"b64\": <base64 string>}}")
        try:  # line breaks and spaces allowed: `base64` wraps its output at 76 columns
            bodies.append((base64.b64decode("".join(b64.split()), validate=True), f"instances[{i}]"))
        except (binascii.Error, ValueError):
            raise error(400, f"instances[{i}] is not valid base64") from None
    return bodies, {k: payload[k] for k in ("top_k", "probabilities") if k in payload}


def input_fn(body: bytes, content_type: str, options: dict | None = None, model: Model | None = None) -> Batch:
    """Decode a request: raw image bytes, or JSON {"instances": [base64 or {"b64": ...}], ...}."""
    options = dict(options or {})
    if len(body) > max_payload_bytes():
        raise error(413, payload_too_large(len(body)))
    media = media_type(content_type)
    if media in IMAGE_TYPES or media.startswith("image/"):
        bodies = [(body, "body")]
    elif media == JSON_TYPE:
        bodies, in_body = _instances(body)
        options.update(in_body)
    else:
        raise error(415, f"unsupported content type {content_type!r}; send image/jpeg, image/png, "
                         f"application/x-image or application/json")
    top_k, full = _options(options, len(model.classes))
    return Batch(torch.stack(_decode_all(bodies, model)), top_k, full)


def answer_type(accept: str | None) -> str:
    """The media type to answer with for this Accept header (RFC 9110 12.5.1: a list of ranges,
    each with an optional q weight; q=0 means 'not this'). Only JSON is offered."""
    if not accept or not accept.strip():
        return JSON_TYPE
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and media.lower() in (JSON_TYPE, "application/*", "*/*"):
            return JSON_TYPE
    raise error(406, f"cannot answer with {accept!r}; accept application/json")


@torch.inference_mode()
def predict_fn(batch: Batch, model: Model) -> Prediction:
    logits = model.network(batch_to(batch.images, model.device))
    return Prediction(torch.softmax(logits, dim=1).cpu(), batch.top_k, batch.probabilities)


def output_fn(prediction: Prediction, accept: str, model: Model | None = None) -> tuple[str, str]:
    content_type = answer_type(accept)
    results = []
    for probs in prediction.probabilities:
        values, indices = probs.topk(prediction.top_k)
        top = [{"label": model.classes[i], "index": int(i), "probability": round(float(p), 6)}
               for p, i in zip(values.tolist(), indices.tolist())]
        result = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
        if prediction.full:
            result["probabilities"] = {c: round(float(p), 6) for c, p in zip(model.classes, probs.tolist())}
        results.append(result)
    return json.dumps({"predictions": results}), content_type
