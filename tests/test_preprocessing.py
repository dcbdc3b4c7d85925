import io

import pytest
import torch
from PIL import Image

from image_classifier.preprocessing import (ImageTooLarge, Preprocessing, decode, eval_transform, open_image,
                                            to_rgb)

PRE = Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 30), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode(encode(image, "JPEG", exif=exif), PRE)
    assert decoded.size == (30, 60)


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                       ("CMYK", "JPEG"), ("I;16", "PNG"), ("1", "PNG")])
def test_every_mode_becomes_rgb(mode, fmt):
    image = Image.new(mode, (20, 20))
    assert decode(encode(image, fmt), PRE).mode == "RGB"


def test_transparent_pixels_become_white_not_black():
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert to_rgb(Image.open(io.BytesIO(encode(image, "PNG")))).getpixel((5, 5)) == (255, 255, 255)


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(ImageTooLarge):
        open_image(data, max_pixels=1_000_000)


def test_eval_transform_gives_a_normalised_square_tensor():
    tensor = eval_transform(PRE)(Image.new("RGB", (80, 50), (255, 255, 255)))
    assert tensor.shape == (3, 32, 32) and torch.allclose(tensor, torch.ones_like(tensor))
