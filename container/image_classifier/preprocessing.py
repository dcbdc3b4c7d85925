"""Image decoding and the transforms shared by training, evaluation and serving.

Serving uses exactly `decode` and `eval_transform`, the functions the training job's
evaluation uses, with the preprocessing settings stored in the model's manifest.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from PIL import Image

from .hyperparameters import AUGMENTS
from .vision import transforms

INTERPOLATION = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "nearest": transforms.InterpolationMode.NEAREST,
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a backbone wants its input; stored in the manifest so serving repeats it exactly."""
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Preprocessing":
        return cls(int(data["image_size"]), int(data["resize_size"]), tuple(data["mean"]),
                   tuple(data["std"]), str(data["interpolation"]))


def open_image(source: bytes | str | Path, max_pixels: int | None = None,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """Open an image lazily (formats: only these Pillow plugins may read it); raise ImageTooLarge
    before decoding more than max_pixels."""
    image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, formats=formats)
    if max_pixels is not None and image.width * image.height > max_pixels:
        raise ImageTooLarge(image.width, image.height, max_pixels)
    return image


JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera's JPEG with more pictures after it (Pillow opens the first)
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def to_rgb(image: Image.Image, draft_size: int | None = None, orientation: int | None = None) -> Image.Image:
    """Upright RGB: EXIF orientation applied; grayscale, palette, alpha and CMYK converted.

    orientation: the EXIF orientation when the caller has read it already (serving reads it from
    the file's header, image_headers); otherwise Pillow's getexif() gives it (EXIF, else XMP).

    draft_size: the smallest side the caller will resize to. A JPEG decoder then scales down by
    1/2..1/8 while decoding, and any other image far larger than that is box-reduced to no less
    than twice it before its mode is converted (much faster: a 40 Mpx RGBA PNG took 0.97 s, most
    of it converting and resizing every pixel; the later antialiased resize dominates quality anyway).
    """
    if draft_size and image.format in JPEG_FORMATS:
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    if orientation is None or image.format == "TIFF":  # a TIFF applies its own while loading, and drops the tag
        orientation = image.getexif().get(0x0112, 1)
    if draft_size:
        image = _reduced(image, draft_size)
    if orientation in UPRIGHT:
        image = image.transpose(UPRIGHT[orientation])
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def _reduced(image: Image.Image, size: int) -> Image.Image:
    """Box-reduced by a whole factor to a shorter side of at least 2 * size (Image.reduce takes only
    8-bit modes: the others are converted first)."""
    factor = min(image.size) // (2 * size)
    if factor < 2:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
        alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
        grey = len(image.getbands()) == 1 and image.mode != "P"  # 1, I;16, I, F
        image = image.convert("RGBA" if alpha else "L" if grey else "RGB")
    return image.reduce(factor)


def decode(source: bytes | str | Path, pre: Preprocessing, max_pixels: int | None = None) -> Image.Image:
    return to_rgb(open_image(source, max_pixels), draft_size=pre.resize_size)


def decoded_pixels(image: Image.Image, pre: Preprocessing) -> int:
    """Pixels that decoding this lazily opened image will produce, known before decoding: a JPEG
    is drafted to the scale to_rgb will decode it at."""
    if image.format in JPEG_FORMATS:
        image.draft("RGB", (pre.resize_size, pre.resize_size))
    return image.width * image.height


def eval_crop(pre: Preprocessing):
    """The evaluation's geometry: resize the shorter side, crop the centre (an image in, an image out)."""
    return transforms.Compose([
        transforms.Resize(pre.resize_size, interpolation=INTERPOLATION[pre.interpolation]),
        transforms.CenterCrop(pre.image_size),
    ])


def eval_transform(pre: Preprocessing):
    return transforms.Compose([eval_crop(pre), transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What training adds to the random crop and flip (the `augment` and `random-erasing`
    hyperparameters); the default adds nothing."""
    augment: str = "none"
    erasing: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


NO_AUGMENTATION = Augmentation()


def train_transform(pre: Preprocessing, aug: Augmentation = NO_AUGMENTATION):
    """RandomResizedCrop and flip; then TrivialAugmentWide (Müller & Hutter 2021) or RandAugment
    (Cubuk et al. 2020; 2 ops at magnitude 9, timm's and torchvision's recipes' setting) on the
    crop; random erasing (Zhong et al. 2020) on the normalised tensor, filled with 0: the mean."""
    interpolation = INTERPOLATION[pre.interpolation]
    steps = [transforms.RandomResizedCrop(pre.image_size, interpolation=interpolation, antialias=True),
             transforms.RandomHorizontalFlip()]
    if aug.augment == "trivialaugment":
        steps.append(transforms.TrivialAugmentWide(interpolation=interpolation))
    elif aug.augment == "randaugment":
        steps.append(transforms.RandAugment(num_ops=2, magnitude=9, interpolation=interpolation))
    elif aug.augment != "none":
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {aug.augment!r}")
    steps += [transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)]
    if aug.erasing:
        steps.append(transforms.RandomErasing(p=aug.erasing, value=0))
    return transforms.Compose(steps)


class ImageTooLarge(Exception):
    def __init__(self, width: int, height: int, limit: int):
        super().__init__(f"image is {width}x{height} = {width * height} pixels; the limit is {limit}")
