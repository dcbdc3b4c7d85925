"""The most confident mistakes as pictures, for the report: each photo as the model saw it (the eval
crop) and the same crop with the Grad-CAM heat map of the class it wrongly chose laid over it (a
network without a convolutional feature map, a transformer, shows the crop alone).
Written beside the evaluation (output/data/evaluation/CHANNEL_mistakes/), so that a cloud job's
report finds them in output.tar.gz without the data set.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import gradcam
from ..preprocessing import Preprocessing, eval_crop, eval_transform, to_rgb

log = logging.getLogger(__name__)

THUMBNAIL = 160  # px: the gallery's tiles


def overlay(crop: Image.Image, heatmap: np.ndarray) -> Image.Image:
    """Red where the model looked, in proportion to the map."""
    alpha = Image.fromarray(np.round(heatmap * 180).astype(np.uint8)).resize(crop.size, Image.BILINEAR)
    return Image.composite(Image.new("RGB", crop.size, (230, 20, 20)), crop, alpha)


def write(model: torch.nn.Module, device: torch.device, pre: Preprocessing, root: Path, mistakes: list[dict],
          classes: list[str], folder: Path) -> list[dict]:
    """The mistakes, each with `thumbnail` and `overlay` (paths relative to folder's parent) where
    its picture was made."""
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    try:
        layer = gradcam.last_spatial_layer(model, pre.image_size)
    except gradcam.Unsupported as e:  # a transformer: the pictures without their heat maps
        log.info("mistakes shown without Grad-CAM: %s", e)
        layer = None
    transform, crop_of = eval_transform(pre), eval_crop(pre)
    shown = []
    for i, mistake in enumerate(mistakes):
        shown.append(mistake)
        try:
            with Image.open(Path(root) / mistake["file"]) as opened:
                image = to_rgb(opened)
                tensor = transform(image).to(device)
                crop = crop_of(image)  # what the network saw
        except OSError:
            continue  # the file changed since it was evaluated: no picture, the row stays
        names = (f"{i:02d}.jpg", f"{i:02d}_gradcam.jpg")
        pictures = [crop]
        if layer is not None:
            found = gradcam.explain(model, layer, tensor, classes.index(mistake["predicted"]))
            pictures.append(overlay(crop, found.heatmap))
        for name, picture in zip(names, pictures):
            picture.resize((THUMBNAIL, THUMBNAIL), Image.BILINEAR).save(folder / name, quality=85)
        shown[-1] = {**mistake, "thumbnail": f"{folder.name}/{names[0]}",
                     **({"overlay": f"{folder.name}/{names[1]}"} if layer is not None else {})}
    return shown
