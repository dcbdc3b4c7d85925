"""The handler functions SageMaker's inference toolkit calls: model_fn, input_fn, predict_fn,
output_fn. Images are decoded and transformed with the same functions training evaluates with.

Request errors raise GenericInferenceToolkitError(status, message); the transformer turns them
into JSON without a traceback.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import struct
import time
import warnings
import zlib

import torch
from PIL import Image, UnidentifiedImageError
from sagemaker_inference.errors import GenericInferenceToolkitError

from .. import artifact, gradcam, precision
from . import environment, explanations, image_headers
from .image_headers import Header
from ..models import batch_to
from ..preprocessing import ImageTooLarge, Preprocessing, decoded_pixels, eval_transform, open_image, to_rgb
from .environment import max_batch_images, max_decode_seconds, max_payload_bytes, max_pixels, max_request_pixels
from .responses import JSON_TYPE, JSONLINES_TYPE, media_type, payload_too_large

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")  # and any other image/*
DEFAULT_TOP_K = 5
OPTIONS = ("top_k", "probabilities", "explain", "explain_class")

BOMB = (Image.DecompressionBombWarning, Image.DecompressionBombError)
# What Pillow's plugins raise on a damaged file; the header walk refuses the damage it knows of, and
# a client's bad bytes are never a 500.
DAMAGED = (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError, struct.error, zlib.error,
           ZeroDivisionError)
# A number in a TIFF's tags against a pixel: Pillow unpacks each into a Python object (1 MiB of
# rationals, 131,072 of them, took 0.37 s in load(): 2.8 us each; a pixel at the budget's rate 0.015 us).
TIFF_VALUE_COST = 200


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
    eager: torch.nn.Module | None = None  # the fp32 network as trained: Grad-CAM needs its gradients
    _explain_layer: torch.nn.Module | None = None

    def explain_layer(self) -> torch.nn.Module:
        if self._explain_layer is None:
            self._explain_layer = gradcam.last_spatial_layer(self.eager, self.preprocessing.image_size)
        return self._explain_layer


@dataclasses.dataclass
class Batch:
    images: torch.Tensor
    top_k: int
    probabilities: bool
    explain: bool = False
    explain_class: int | None = None  # None: the predicted class
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # each input's upright (width, height)


@dataclasses.dataclass
class Prediction:
    probabilities: torch.Tensor  # (n, classes)
    top_k: int
    full: bool
    explanations: list[dict] | None = None


def model_fn(model_dir: str) -> Model:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network, manifest = artifact.load(model_dir, device)
    pre = Preprocessing.from_json(manifest["preprocessing"])
    name, why = precision.choose(environment.precision(), device, manifest, environment.PRECISION)
    served = precision.prepare(network, name, device, pre.image_size, environment.graph())
    log.info("loaded %s with %d classes from %s; serving in %s (%s)", manifest["backbone"], manifest["num_classes"],
             model_dir, name, why)
    # No warm-up request here: answering one before MMS forks its workers took 100 ms off each
    # worker's first request but cost 20% of their throughput (docs/PERFORMANCE.md).
    return Model(served, manifest, manifest["class_names"], pre, eval_transform(pre), device, name, eager=network)


def parse_options(custom_attributes: str | None) -> dict:
    """CustomAttributes 'top_k=3,probabilities=true,explain=gradcam' (',' or ';' separated) -> options."""
    options = {}
    for part in (custom_attributes or "").replace(";", ",").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip() in OPTIONS:
            options[key.strip()] = value.strip()
    return options


def _flag(value) -> bool:
    return value if isinstance(value, bool) else environment.truthy(str(value))


def _options(raw: dict, model: Model) -> dict:
    top_k = raw.get("top_k", DEFAULT_TOP_K)
    try:
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise error(400, f"top_k must be a positive integer, got {top_k!r}") from None
    found = {"top_k": min(top_k, len(model.classes)), "probabilities": _flag(raw.get("probabilities", False))
             or environment.all_probabilities()}
    method = str(raw.get("explain", "")).strip().lower()
    if method and method not in explanations.METHODS:
        raise error(400, f"explain must be one of {', '.join(explanations.METHODS)}, got {method!r}")
    if method:
        try:
            model.explain_layer()  # found once; refused here, before any pixel is decoded
        except gradcam.Unsupported as e:
            raise error(400, f"explain={method} is not supported for {model.manifest['backbone']}: {e}") from None
    wanted = raw.get("explain_class")
    if wanted is not None and not method:
        raise error(400, "explain_class needs explain=gradcam")
    if wanted is not None and str(wanted) not in model.classes:
        raise error(400, f"explain_class {str(wanted)!r} is not one of the model's classes "
                         f"({', '.join(model.classes[:5])}{', ...' if len(model.classes) > 5 else ''})")
    found.update(explain=bool(method), explain_class=None if wanted is None else model.classes.index(str(wanted)))
    return found


@contextlib.contextmanager
def _pillow_guard():
    """Pillow's own bomb check on, at MAX_IMAGE_PIXELS, as an error: the backstop for pixels a
    plugin would decode behind our header checks (Pillow only warns between 1x and 2x its limit)."""
    Image.MAX_IMAGE_PIXELS = max_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's other warnings (palette transparency, EXIF) are not the client's
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _open(body: bytes, what: str) -> tuple[Image.Image, Header]:
    """The image's header checked (image_headers: format, size, scans, metadata), then the image
    opened lazily by that format's Pillow plugin alone. Nothing here decodes a pixel."""
    if not body:
        raise error(400, f"{what} is empty; send the image bytes")
    try:
        header = image_headers.read(body)
    except image_headers.Refused as e:
        raise error(e.status, f"{what}: {e}") from None
    if header.pixels > max_pixels():
        raise error(413, f"{what}: {ImageTooLarge(header.width, header.height, max_pixels())}")
    try:
        return open_image(header.for_decoder(bytes(body)), max_pixels=max_pixels(), formats=(header.format,)), header
    except (ImageTooLarge, *BOMB) as e:
        raise error(413, f"{what}: {e}") from None
    except UnidentifiedImageError:
        raise error(400, f"{what} is not a {header.format} image that can be decoded") from None
    except DAMAGED as e:
        raise error(400, f"{what} could not be decoded: {_damage(e)}") from None


def _tensor(image: Image.Image, header: Header, model: Model, what: str) -> torch.Tensor:
    try:  # orientation from the header: Pillow's getexif() would parse EXIF, or decode a PNG to find it
        return model.transform(to_rgb(image, draft_size=model.preprocessing.resize_size,
                                      orientation=header.orientation))
    except BOMB as e:
        raise error(413, f"{what}: {e}") from None
    except DAMAGED as e:
        raise error(400, f"{what} could not be decoded: {_damage(e)}") from None


def _damage(e: Exception) -> str:
    if isinstance(e, (OSError, SyntaxError, ValueError, EOFError)) and str(e):
        return str(e)
    return f"{type(e).__name__} {e}".strip()  # a KeyError's text alone is just the key


def decode_cost(image: Image.Image, header: Header, pre: Preprocessing) -> int:
    """Pixels counted against MAX_REQUEST_PIXELS, known before decoding. A single-scan JPEG counts
    at the scale it is drafted to; one of several scans at full size, as libjpeg keeps every
    coefficient of the full image and passes over them once per scan (scans are capped). A PNG
    of over 24 bits a pixel counts in proportion (8-bit RGBA: 4/3, 16-bit RGBA: 8/3), an
    interlaced one a quarter more: what its decoder inflates and unpacks, then converts (a 40 Mpx
    8-bit RGBA PNG took 0.65 to 0.95 s on 2 cores, a 16-bit one 1 s).
    A run-length BMP counts 25 times its pixels, plus BMP_RLE_CODE_COST a code: Pillow decodes
    it in Python. A TIFF adds TIFF_VALUE_COST for each number in its tags and TIFF_STRIP_COST
    for each strip or tile (image_headers' `extra`)."""
    if header.format == "JPEG" and header.scans > 1:
        return header.pixels
    if header.format == "PNG":  # the header's size is Pillow's (one IHDR, first); max() keeps that true regardless
        pixels = max(header.pixels, image.width * image.height)
        cost = pixels * max(24, header.bits_per_pixel) // 24
        return cost * 5 // 4 if header.interlaced else cost
    return decoded_pixels(image, pre) * header.weight + header.values * TIFF_VALUE_COST + header.extra


def _decode_all(bodies: list[tuple[bytes, str]], model: Model) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Every image's header is read and its cost counted before any is decoded, so that a request
    over the work budget is refused at once, not after the worker has spent seconds on it.
    Orientation comes from the headers read (image_headers), never from Pillow's getexif(), which
    decodes a PNG whose EXIF follows its pixels."""
    with _pillow_guard():
        opened = [(*_open(body, what), what) for body, what in bodies]
        total = sum(decode_cost(image, header, model.preprocessing) for image, header, _ in opened)
        if total > max_request_pixels():
            raise error(413, f"the request's images count as {total} pixels in all (docs/SERVING.md, Requests); the "
                             f"limit is {max_request_pixels()} per request (MAX_REQUEST_PIXELS): send fewer or smaller "
                             "images")
        deadline = time.monotonic() + max_decode_seconds()
        tensors = []
        for i, (image, header, what) in enumerate(opened):
            if i and time.monotonic() > deadline:
                raise error(413, f"decoding took over {max_decode_seconds():g} s (MAX_DECODE_SECONDS) before "
                                 f"{what}; send fewer or smaller images")
            tensors.append(_tensor(image, header, model, what))
    return tensors, [header.upright_size for _, header, _ in opened]


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
    return bodies, {k: payload[k] for k in OPTIONS if k in payload}


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
    chosen = _options(options, model)
    tensors, sizes = _decode_all(bodies, model)
    return Batch(torch.stack(tensors), sizes=sizes, **chosen)


OFFERED = (JSON_TYPE, JSONLINES_TYPE)  # in order of preference when the client weighs them alike


def answer_type(accept: str | None) -> str:
    """The media type to answer with for this Accept header (RFC 9110 12.5.1: a list of ranges,
    each with an optional q weight, q=0 meaning 'not this'; a type takes the weight of the most
    specific range that matches it). JSON, or JSON Lines (one answer per line, for batch
    transform and Clarify)."""
    if not accept or not accept.strip():
        return JSON_TYPE
    weights = {}  # offered type -> (specificity, q)
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        media, q = media.lower(), 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for offered in OFFERED:
            specificity = 2 if media == offered else 1 if media == "application/*" else 0 if media == "*/*" else -1
            if specificity >= 0 and specificity > weights.get(offered, (-1, 0))[0]:
                weights[offered] = (specificity, q)
    best = max(OFFERED, key=lambda t: weights.get(t, (-1, 0.0))[1])  # max keeps the first of equals
    if weights.get(best, (-1, 0.0))[1] <= 0:
        raise error(406, f"cannot answer with {accept!r}; accept application/json or application/jsonlines")
    return best


def predict_fn(batch: Batch, model: Model) -> Prediction:
    return predict_many([batch], model)[0]


def predict_many(batches: list[Batch], model: Model) -> list[Prediction]:
    """Several requests' images in one forward (MMS's dynamic batching), one Prediction each."""
    with torch.inference_mode():
        images = batches[0].images if len(batches) == 1 else torch.cat([b.images for b in batches])  # no copy
        logits = model.network(batch_to(images, model.device))
    probabilities = torch.softmax(logits, dim=1).cpu().split([len(b.images) for b in batches])
    predictions = [Prediction(p, b.top_k, b.probabilities) for b, p in zip(batches, probabilities)]
    for batch, prediction in zip(batches, predictions):
        if batch.explain:
            prediction.explanations = [
                explain(model, image, size, int(probs.argmax()) if batch.explain_class is None else batch.explain_class)
                for image, size, probs in zip(batch.images, batch.sizes, prediction.probabilities)]
    return predictions


def explain(model: Model, image: torch.Tensor, size: tuple[int, int], class_index: int) -> dict:
    """Grad-CAM for the served answer's class (or the one asked for), on the fp32 network."""
    found = gradcam.explain(model.eager, model.explain_layer(), image.to(model.device), class_index)
    return explanations.answer(found, model.classes, size, model.preprocessing)


def output_fn(prediction: Prediction, accept: str, model: Model | None = None) -> tuple[str, str]:
    content_type = answer_type(accept)
    results = []
    for n, probs in enumerate(prediction.probabilities):
        values, indices = probs.topk(prediction.top_k)
        top = [{"label": model.classes[i], "index": int(i), "probability": round(float(p), 6)}
               for p, i in zip(values.tolist(), indices.tolist())]
        result = {"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}
        if prediction.full or content_type == JSONLINES_TYPE:  # JSON Lines is for machines: batch, Clarify
            scores = [round(p, 6) for p in probs.tolist()]  # in class index order (Clarify)
            result["probabilities"], result["scores"] = dict(zip(model.classes, scores)), scores
        if prediction.explanations is not None:
            result["explanation"] = prediction.explanations[n]
        results.append(result)
    if content_type == JSONLINES_TYPE:
        return "".join(json.dumps(r) + "\n" for r in results), content_type
    return json.dumps({"predictions": results}), content_type
