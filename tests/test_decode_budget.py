"""Decoding is bounded by construction: each hostile file of issue 23 is refused by the handler
before any pixel is decoded, with Pillow's decoders instrumented to fail if they are reached."""
import base64
import contextlib
import io
import json
import struct

import pytest
from PIL import Image, ImageFile
from sagemaker_inference.errors import GenericInferenceToolkitError

import hostile_images as hostile
from image_classifier.serving import image_headers
from image_classifier.serving import inference


class Decoded(AssertionError):
    pass


@contextlib.contextmanager
def no_decoding():
    """Every way Pillow turns bytes into pixels raises Decoded: ImageFile.load (every plugin's
    decode, and what getexif() calls on a PNG whose EXIF follows its pixels), the C decoders and
    Image.load."""
    def decoded(*args, **kwargs):
        raise Decoded("a decoder was reached")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", decoded)
        patch.setattr(Image.Image, "load", decoded)
        patch.setattr(Image, "_getdecoder", decoded)
        yield


def refusal(model, body: bytes, content_type: str = "image/jpeg") -> tuple[int, str]:
    """The handler's refusal of body, with decoding instrumented to fail."""
    with pytest.raises(GenericInferenceToolkitError) as e, no_decoding():
        inference.input_fn(body, content_type, model=model)
    return e.value.status_code, e.value.message


def json_body(*images: bytes) -> bytes:
    return json.dumps({"instances": [base64.b64encode(i).decode() for i in images]}).encode()


def test_the_instrument_catches_a_decode(small_model):
    """Control: without it, the refusal tests below could pass with decoding in place."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, "JPEG")
    with pytest.raises(Decoded), no_decoding():
        inference.input_fn(buf.getvalue(), "image/jpeg", model=small_model)


def webp_with_exif(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "WEBP", exif=b"Exif\0\0" + b"\0" * size)
    return buf.getvalue()


def tiff_with_strips(strips: int) -> bytes:
    """A valid little-endian TIFF header whose IFD0 lists `strips` strip offsets and byte counts
    (the arrays in the file: 8 bytes a strip; the strips themselves are not)."""
    arrays = 8 + 2 + 12 * 8 + 4
    entries = [(256, 4, 1, 8), (257, 4, 1, strips), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, strips, arrays), (278, 4, 1, 1), (279, 4, strips, arrays + 4 * strips)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    return b"II*\0" + struct.pack("<I", 8) + ifd + bytes(8 * strips)


def bmp_header(width: int, height: int) -> bytes:
    return b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0,
                                                                   0, 0, 0, 0)


ATTACKS = {  # name: (body, content type, status, words of the message)
    "jpeg-400000-scans": (lambda: hostile.progressive_jpeg_repeated_scans(), "image/jpeg", 413, "over 64 scans"),
    "ico-60000-frame": (lambda: hostile.ico_with_huge_png(), "image/x-icon", 400, "not an image in a served format"),
    "png-late-exif-x64": (lambda: json_body(*[hostile.png_with_late_exif()] * 64), "application/json", 413,
                          "MAX_REQUEST_PIXELS"),
    "gif-4.4MB-comment": (lambda: hostile.gif_with_huge_comment(), "image/gif", 413, "bytes of comments"),
    "webp-2MB-exif": (lambda: webp_with_exif(2_000_000), "image/webp", 413, "bytes of metadata"),
    "tiff-700000-strips": (lambda: tiff_with_strips(700_000), "image/tiff", 413, "strips or tiles"),
    "bmp-100000-square": (lambda: bmp_header(100_000, 100_000), "image/bmp", 413, "the limit is 40000000"),
    "png-one-bit-7000": (lambda: hostile.one_bit_png(7000), "image/png", 413, "the limit is 40000000"),
    "png-8-bit-rgba-5500": (lambda: hostile.deep_png(5500, 8), "image/png", 413, "count as 40333333 pixels"),
    "png-16-bit-rgba-3900": (lambda: hostile.deep_png(3900), "image/png", 413, "count as 40560000 pixels"),
    "png-16-bit-rgba-interlaced-3500": (lambda: hostile.deep_png(3500, interlaced=True), "image/png", 413,
                                        "count as 40833332 pixels"),
    "jpeg-6MB-of-fill-bytes": (lambda: hostile.jpeg_with_fill_bytes(), "image/jpeg", 413, "fill bytes"),
    "bmp-rle8-1300-square": (lambda: hostile.rle_bmp(1300), "image/bmp", 413, "count as 42354040 pixels"),
    "bmp-rle4-6000-square": (lambda: hostile.rle_bmp(6000, rle4=True), "image/bmp", 413, "count as 900480040"),
    "tiff-exif-4.5GB-of-tag-values": (lambda: hostile.amplified_exif("tiff"), "image/tiff", 413,
                                      "4500000000 bytes of values"),
    "tiff-200000-numbers": (lambda: hostile.amplified_exif("tiff", tags=200, blob=2000, value_type=3), "image/tiff",
                            413, "200008 numbers"),
    "tiff-interop-outside-exif": (lambda: tiff_with_interop_in_ifd0(), "image/tiff", 400, "Interop directory"),
}


def tiff_with_interop_in_ifd0() -> bytes:
    """Pillow's load fails on it with a KeyError: a 500 had it reached the decoder."""
    body = bytearray(hostile.amplified_exif("tiff", tags=2, blob=16))
    struct.pack_into("<HHII", body, 8 + 2 + 12 * 9, 0xA005, 4, 1, 8)  # in place of the Exif pointer
    return bytes(body)


@pytest.mark.parametrize("name", ATTACKS)
def test_each_attack_is_refused_before_any_pixel_is_decoded(small_model, name):
    make, content_type, status, words = ATTACKS[name]
    found, message = refusal(small_model, make(), content_type)
    assert (found, words in message) == (status, True), message


def test_the_request_budget_is_checked_before_any_orientation_is_read(small_model, monkeypatch):
    """Issue 23's regression: getexif() on a PNG whose EXIF follows its pixels decodes the image."""
    reads = []
    monkeypatch.setattr(Image.Image, "getexif", lambda self: reads.append(self) or Image.Exif())
    status, _ = refusal(small_model, json_body(*[hostile.png_with_late_exif()] * 64), "application/json")
    assert status == 413 and reads == []


def test_orientation_comes_from_the_header_even_after_the_pixels(small_model):
    batch = inference.input_fn(hostile.png_with_late_exif(300), "image/png", model=small_model)
    assert batch.sizes == [(300, 300)]
    body = hostile.png_with_late_exif(300)
    rotated = Image.new("1", (300, 100))
    buf = io.BytesIO()
    rotated.save(buf, "PNG")
    late = buf.getvalue()
    late = late[:late.rindex(b"IEND") - 4] + body[body.index(b"eXIf") - 4:body.rindex(b"IEND") - 4] + \
        late[late.rindex(b"IEND") - 4:]
    assert inference.input_fn(late, "image/png", model=small_model).sizes == [(100, 300)]  # orientation 6


def test_pillow_bomb_guard_is_on_behind_the_header_checks(small_model, monkeypatch):
    """Were the allow-list bypassed (here: the header reader told to pass the ICO), Pillow's own
    check still stops the frame before it is decoded, at MAX_IMAGE_PIXELS rather than never."""
    monkeypatch.setattr(image_headers, "read", lambda data: image_headers.Header("ICO", 256, 256))
    status, message = refusal(small_model, hostile.ico_with_huge_png(), "image/x-icon")
    assert status == 413 and "decompression bomb" in message
    assert Image.MAX_IMAGE_PIXELS == 40_000_000


def test_formats_outside_the_allow_list_never_reach_their_plugin(small_model, monkeypatch):
    from PIL import IcoImagePlugin, PsdImagePlugin
    opened = []
    for plugin in (IcoImagePlugin.IcoImageFile, PsdImagePlugin.PsdImageFile):
        monkeypatch.setattr(plugin, "_open", lambda self: opened.append(self))
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "ICO")
    assert refusal(small_model, buf.getvalue(), "image/x-icon")[0] == 400
    assert opened == []


def test_a_png_counts_what_its_decoder_inflates(small_model):
    """Pixels of over 24 bits count in proportion: 16-bit RGBA (64 bits) 8/3, 8-bit RGBA 4/3; 8-bit
    RGB and 1-bit count as their pixels; Adam7 interlacing a quarter more."""
    cost = {}
    for name, body in [("rgba16", hostile.deep_png(300)), ("rgba16-adam7", hostile.deep_png(300, interlaced=True)),
                       ("rgba8", hostile.deep_png(300, 8)), ("grey1", hostile.deep_png(300, 1, 0)),
                       ("rgb16", hostile.deep_png(300, 16, 2))]:
        image, header = inference._open(body, name)
        cost[name] = inference.decode_cost(image, header, small_model.preprocessing)
    assert cost == {"rgba16": 240_000, "rgba16-adam7": 300_000, "rgba8": 120_000, "grey1": 90_000, "rgb16": 180_000}


def test_a_camera_mpo_is_a_jpeg_drafted_to_its_first_picture(small_model):
    buf = io.BytesIO()
    black = Image.new("RGB", (4000, 3000))
    Image.new("RGB", (4000, 3000), "red").save(buf, "MPO", save_all=True, append_images=[black])
    image, header = inference._open(buf.getvalue(), "body")
    assert (image.format, header.format) == ("JPEG", "JPEG")  # the MPF index is kept from the decoder
    assert inference.decode_cost(image, header, small_model.preprocessing) < 4000 * 3000 / 50  # drafted
    batch = inference.input_fn(buf.getvalue(), "image/jpeg", model=small_model)
    assert batch.sizes == [(4000, 3000)] and float(batch.images[0, 0].mean()) > 0.9  # the red one, not the black


def test_serving_parses_no_embedded_exif_or_mpf_through_pillow(small_model, monkeypatch):
    """Orientation is the header's (EXIF, else XMP) and a JPEG reaches Pillow without its EXIF and
    MPF segments, so Pillow's tag parser (a copy, or a Python object, per value) never runs on an
    embedded block: each attack below, hours of work or gigabytes for it, is served at once."""
    from PIL import TiffImagePlugin
    monkeypatch.setattr(Image.Image, "getexif", lambda self: pytest.fail("getexif() was called"))
    monkeypatch.setattr(TiffImagePlugin.ImageFileDirectory_v2, "load",
                        lambda self, fp: pytest.fail("Pillow parsed a tag directory"))
    for kind in ("jpeg", "png", "webp"):  # 4.5 GB of tag values each; orientation 6 of an 8x8 image
        assert inference.input_fn(hostile.amplified_exif(kind), f"image/{kind}", model=small_model).sizes == [(8, 8)]
    assert inference.input_fn(hostile.jpeg_with_mpf(), "image/jpeg", model=small_model).sizes == [(64, 64)]
    wide = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 20), "red").save(wide, "PNG", exif=exif)
    assert inference.input_fn(wide.getvalue(), "image/png", model=small_model).sizes == [(20, 60)]


def test_a_tiff_counts_the_numbers_pillow_unpacks_from_its_tags(small_model):
    body = hostile.amplified_exif("tiff", tags=10, blob=8_000, value_type=5)  # 10,000 rationals
    image, header = inference._open(body, "body")
    assert inference.decode_cost(image, header, small_model.preprocessing) == 8 * 8 + 10_008 * 200 + 500  # 1 strip
    with pytest.raises(GenericInferenceToolkitError) as e:  # 20 copies: 40.04 M, over the budget
        inference.input_fn(json_body(*[body] * 20), "application/json", model=small_model)
    assert e.value.status_code == 413 and "count as 40043280 pixels" in e.value.message


def test_a_small_run_length_bmp_is_served(small_model):
    """The weight keeps run-length BMPs to 1.6 Mpx a request; under that they decode as Pillow decodes them."""
    body = hostile.rle_bmp(200)
    image, header = inference._open(body, "body")
    codes = (len(body) - 14 - 40 - 4 * 256) // 2  # after the file and info headers and the palette
    assert inference.decode_cost(image, header, small_model.preprocessing) == 200 * 200 * 25 + codes * 40
    assert inference.input_fn(body, "image/bmp", model=small_model).sizes == [(200, 200)]
