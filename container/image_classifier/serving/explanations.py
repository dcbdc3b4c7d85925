"""Grad-CAM answers at the endpoint (CustomAttributes `explain=gradcam`, optionally
`explain_class=LABEL`): the heat map as a grayscale PNG the size of the input image (upright, at
its full resolution) and the box where the model looked, in that image's pixels.

The network saw only the eval transform's centre crop (resize the shorter side to resize_size,
crop image_size): the heat map is placed where that crop lies in the input; outside it, 0.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from .. import gradcam
from ..preprocessing import Preprocessing

METHODS = ("gradcam",)


def crop_region(width: int, height: int, pre: Preprocessing) -> tuple[float, float, float, float]:
    """Where eval_transform's crop lies in a width x height image: torchvision's Resize(int) scales
    the shorter side to resize_size and truncates the longer; CenterCrop rounds its offsets."""
    if width <= height:
        resized_w, resized_h = pre.resize_size, int(pre.resize_size * height / width)
    else:
        resized_w, resized_h = int(pre.resize_size * width / height), pre.resize_size
    left, top = int(round((resized_w - pre.image_size) / 2.0)), int(round((resized_h - pre.image_size) / 2.0))
    fx, fy = width / resized_w, height / resized_h
    return left * fx, top * fy, (left + pre.image_size) * fx, (top + pre.image_size) * fy


def answer(explanation: gradcam.Explanation, classes: list[str], size: tuple[int, int], pre: Preprocessing) -> dict:
    """The JSON of one image's explanation; size: the input's upright (width, height)."""
    width, height = size
    left, top, right, bottom = crop_region(width, height, pre)
    fx, fy = (right - left) / pre.image_size, (bottom - top) / pre.image_size
    region = (max(1, round(right - left)), max(1, round(bottom - top)))
    heat = Image.fromarray(np.round(explanation.heatmap * 255).astype(np.uint8)).resize(region, Image.BILINEAR)
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(heat, (round(left), round(top)))
    png = io.BytesIO()
    canvas.save(png, "PNG", optimize=True)
    bl, bt, br, bb = explanation.box
    return {
        "method": "gradcam", "label": classes[explanation.class_index], "index": explanation.class_index,
        "width": width, "height": height,
        "box": {"left": round(left + bl * fx), "top": round(top + bt * fy),
                "right": min(width, round(left + br * fx)), "bottom": min(height, round(top + bb * fy))},
        "heatmap_png": base64.b64encode(png.getvalue()).decode(),
    }
