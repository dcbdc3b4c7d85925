"""image_headers: every served format read without a decoder, and agreeing with Pillow on real and
generated files; each cap refuses what it is there for."""
import io
import random
import struct

import pytest
from PIL import Image, ImageOps

from image_classifier import image_headers
from image_classifier.image_headers import Refused


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def oriented(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def photo(size=(61, 37), mode="RGB") -> Image.Image:
    rng = random.Random(0)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))).convert(mode)


GENERATED = [
    ("JPEG", "RGB", dict(quality=90)),
    ("JPEG", "RGB", dict(progressive=True)),
    ("JPEG", "L", dict(progressive=True)),
    ("JPEG", "CMYK", dict(progressive=True)),
    ("JPEG", "RGB", dict(exif=oriented(6), icc_profile=b"\0" * 70_000)),  # ICC over several APP2 segments
    ("PNG", "RGB", dict(exif=oriented(8))),
    ("PNG", "P", dict(optimize=True)),
    ("PNG", "1", {}),
    ("PNG", "RGBA", dict(pnginfo=None)),
    ("WEBP", "RGB", dict(quality=80, exif=oriented(6))),
    ("WEBP", "RGBA", dict(lossless=True)),
    ("BMP", "RGB", {}),
    ("BMP", "P", {}),
    ("GIF", "P", dict(comment=b"hello")),
    ("TIFF", "RGB", {}),
    ("TIFF", "RGB", dict(compression="tiff_lzw", exif=oriented(5))),
    ("TIFF", "L", dict(compression="tiff_adobe_deflate")),
    ("TIFF", "1", dict(compression="group4")),
    ("TIFF", "RGB", dict(compression="packbits")),
]


@pytest.mark.parametrize("fmt, mode, options", GENERATED, ids=[f"{f}-{m}-{','.join(o)}" for f, m, o in GENERATED])
def test_each_served_format_is_read_as_pillow_reads_it(fmt, mode, options):
    data = encode(photo(mode=mode), fmt, **options)
    header = image_headers.read(data)
    with Image.open(io.BytesIO(data)) as image:
        stored = image.size if fmt != "TIFF" else (image.tag_v2[256], image.tag_v2[257])  # Pillow turns TIFFs itself
        assert (header.format, header.width, header.height) == (image.format, *stored)
        assert header.orientation == image.getexif().get(0x0112, 1)
        assert header.upright_size == ImageOps.exif_transpose(image).size
        assert header.progressive == bool(image.info.get("progressive"))


def test_real_photos_agree_with_pillow(imagewoof):
    photos = sorted((imagewoof / "test").rglob("*.JPEG"))[::5] + sorted((imagewoof / "train").rglob("*.JPEG"))[::40]
    assert len(photos) > 100
    for path in photos:
        header = image_headers.read(path.read_bytes())
        with Image.open(path) as image:
            assert (header.width, header.height, header.orientation) == (*image.size, image.getexif().get(0x0112, 1))
            assert header.scans >= 1 and header.metadata < image_headers.MAX_METADATA_BYTES, path


def test_progressive_scans_are_counted_from_the_markers():
    assert image_headers.read(encode(photo(), "JPEG")).scans == 1
    assert image_headers.read(encode(photo(), "JPEG", progressive=True)).scans == 10  # libjpeg's script for YCbCr
    assert image_headers.read(encode(photo(mode="L"), "JPEG", progressive=True)).scans == 6


def repeat_first_scan(data: bytes, times: int) -> bytes:
    """The first scan's header and one byte of its data, repeated (as in the attack of issue 23)."""
    sos = data.index(b"\xff\xda")
    (length,) = struct.unpack_from(">H", data, sos + 2)
    piece = data[sos:sos + 2 + length + 1]
    return data[:sos] + piece * times + data[sos:]


def test_a_jpeg_over_the_scan_cap_is_refused_as_too_costly():
    base = encode(photo(mode="L"), "JPEG", progressive=True)
    assert image_headers.read(repeat_first_scan(base, image_headers.MAX_JPEG_SCANS - 6)).scans == 64
    with pytest.raises(Refused, match="over 64 scans") as refused:
        image_headers.read(repeat_first_scan(base, 400_000))
    assert refused.value.status == 413


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00\x01\x00\x01\x00" + b"\0" * 40, "not an image in a served format"),  # ICO
    (encode(photo(), "ICO"), "not an image in a served format"),
    (encode(photo(), "PPM"), "not an image in a served format"),
    (encode(photo(), "TGA"), "not an image in a served format"),
    (b"8BPS\x00\x01" + b"\0" * 40, "not an image in a served format"),  # PSD
    (b"RIFF\0\0\0\0WAVEfmt ", "not an image in a served format"),
    (b"\xff\xd8\xff\xe0\x00", "truncated or malformed"),
    (encode(photo(), "TIFF", compression="jpeg"), "TIFF compression 7 is not served"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 4 + b"IEND", "no IHDR"),
    (b"GIF89a\x08\x00\x08\x00\x00\x00\x00\x3b", "the GIF has no image"),
])
def test_what_is_not_a_served_image_is_refused_with_400(data, message):
    with pytest.raises(Refused, match=message) as refused:
        image_headers.read(data)
    assert refused.value.status == 400


def gif_with_comment(size: int) -> bytes:
    gif = encode(Image.new("P", (8, 8)), "GIF")
    blocks = b"".join(bytes([255]) + b"c" * 255 for _ in range(size // 255)) + b"\0"
    at = gif.index(b"\x2c")  # the image descriptor
    return gif[:at] + b"\x21\xfe" + blocks + gif[at:]


def test_metadata_over_its_caps_is_refused_as_too_costly():
    assert image_headers.read(gif_with_comment(60_000)).metadata >= 59_000
    with pytest.raises(Refused, match="bytes of comments") as refused:
        image_headers.read(gif_with_comment(70_000))
    assert refused.value.status == 413
    big_icc = encode(photo(), "JPEG", icc_profile=b"\0" * (image_headers.MAX_METADATA_BYTES + 1))
    with pytest.raises(Refused, match="bytes of metadata"):
        image_headers.read(big_icc)
    text = photo()
    chunk = b"tEXt" + b"k\0" + b"v" * 2_000_000
    png = encode(text, "PNG")
    png = png[:33] + struct.pack(">I", len(chunk) - 4) + chunk + b"\0\0\0\0" + png[33:]
    with pytest.raises(Refused, match="bytes of metadata"):
        image_headers.read(png)


def test_too_many_structural_entries_are_refused_before_they_are_walked():
    png = encode(photo(), "PNG")
    empty = struct.pack(">I", 0) + b"tIME" + b"\0\0\0\0"
    crowded = png[:33] + empty * (image_headers.MAX_ENTRIES + 1) + png[33:]
    with pytest.raises(Refused, match="structural entries") as refused:
        image_headers.read(crowded)
    assert refused.value.status == 413


@pytest.mark.parametrize("fmt, mode, options", GENERATED[::2], ids=[f"{f}-{m}" for f, m, _ in GENERATED[::2]])
def test_damaged_files_give_a_header_or_a_refusal_never_another_error(fmt, mode, options):
    """Truncated and bit-flipped copies of each format: the walk ends, with a Header or Refused."""
    data = encode(photo(mode=mode), fmt, **options)
    rng = random.Random(fmt + mode)
    for _ in range(300):
        damaged = bytearray(data[:rng.randrange(1, len(data) + 1)])
        for _ in range(rng.randrange(0, 6)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            header = image_headers.read(bytes(damaged))
        except Refused as e:
            assert e.status in (400, 413)
        else:
            assert header.width > 0 and header.height > 0
