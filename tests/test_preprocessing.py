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


def _photo() -> Image.Image:
    from skimage import data as skdata
    return Image.fromarray(skdata.astronaut()).resize((96, 96))


@pytest.mark.parametrize("augment", ["trivialaugment", "randaugment"])
def test_the_recipes_augmentations_change_the_crop_and_keep_its_shape(augment):
    from image_classifier.preprocessing import Augmentation, train_transform
    photo, plain, augmented, differ = _photo(), train_transform(PRE), train_transform(PRE, Augmentation(augment)), 0
    for seed in range(8):
        torch.manual_seed(seed)
        a = plain(photo)
        torch.manual_seed(seed)
        b = augmented(photo)  # the same crop and flip (drawn first), then the augmentation
        assert b.shape == (3, 32, 32)
        differ += not torch.equal(a, b)
    assert differ >= 5  # an op of magnitude 0 or identity leaves a few as they were


def test_random_erasing_fills_a_rectangle_with_the_mean():
    from image_classifier.preprocessing import Augmentation, train_transform
    torch.manual_seed(0)
    erased = train_transform(PRE, Augmentation(erasing=1.0))(Image.new("RGB", (64, 64), (255, 255, 255)))
    zeros = erased.eq(0).all(0)
    rows, cols = zeros.any(1).nonzero(), zeros.any(0).nonzero()
    assert 0 < int(zeros.sum()) < 32 * 32 and int(zeros.sum()) == len(rows) * len(cols)  # one full rectangle
    with pytest.raises(ValueError, match="augment must be one of none, trivialaugment, randaugment"):
        train_transform(PRE, Augmentation("autoaugment"))
