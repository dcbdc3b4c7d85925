"""image_headers: every served format read without a decoder, and agreeing with Pillow on real and
generated files; each cap refuses what it is there for."""
import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageOps, PngImagePlugin
import hostile_images as hostile

from image_classifier.serving import image_headers
from image_classifier.serving.image_headers import Refused


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


# --- EXIF and XMP: what Pillow's getexif() would find, counted as Pillow's parser copies it -------
def _with_exif(fmt: str, exif: Image.Exif | bytes | None = None, xmp: bytes | None = None, size=(30, 20),
               zip_xmp: bool = False) -> bytes:
    buf = io.BytesIO()
    options = {"exif": exif} if exif is not None else {}
    if xmp is not None and fmt == "PNG":  # Pillow writes no XMP to a PNG itself: an iTXt chunk, as Adobe's
        options["pnginfo"] = PngImagePlugin.PngInfo()
        options["pnginfo"].add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=zip_xmp)
    elif xmp is not None:
        options["xmp"] = xmp
    Image.new("RGB", size, "red").save(buf, fmt, **options)
    return buf.getvalue()


def _camera_exif() -> Image.Exif:
    """IFD0, an Exif directory with a 60 KB maker note and an Interop directory, and GPS: a phone's shape."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Maker", "Model X", 8
    exif.get_ifd(0x8769).update({0x927C: b"M" * 60_000, 0x9003: "2026:12:02 10:00:00", 0x829A: 0.004})
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 0.0)})
    return exif


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_a_camera_exif_passes_and_its_values_are_counted(fmt):
    body = _with_exif(fmt, _camera_exif())
    header = image_headers.read(body)
    assert header.orientation == Image.open(io.BytesIO(body)).getexif()[0x0112] == 8
    assert header.upright_size == (20, 30)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "PNG-zipped", "WEBP"])
def test_xmp_orientation_is_read_as_pillow_reads_it(fmt):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    fmt, zipped = fmt.split("-")[0], fmt.endswith("zipped")
    body = _with_exif(fmt, xmp=xmp, zip_xmp=zipped)
    assert image_headers.read(body).orientation == Image.open(io.BytesIO(body)).getexif().get(0x0112) == 6
    exif = Image.Exif()
    exif[0x0112] = 3  # EXIF wins over XMP, in Pillow and here
    body = _with_exif(fmt, exif, xmp, zip_xmp=zipped)
    assert image_headers.read(body).orientation == Image.open(io.BytesIO(body)).getexif().get(0x0112) == 3


def test_a_jpeg_exif_over_several_segments_is_joined_as_pillow_joins_it_and_kept_from_the_decoder():
    body = hostile.amplified_exif("jpeg", tags=1000, blob=60_000)  # 60 MB of tag values in 2 segments
    assert body.count(b"\xff\xe1") == 2
    header = image_headers.read(body)
    assert header.orientation == Image.open(io.BytesIO(body)).getexif()[0x0112] == 6
    kept = header.for_decoder(body)
    assert b"Exif\0\0" not in kept and len(kept) < 1000
    opened = Image.open(io.BytesIO(kept))
    assert "exif" not in opened.info and opened.tobytes() == Image.open(io.BytesIO(body)).tobytes()


def test_an_mpf_index_is_kept_from_the_decoder():
    body = hostile.jpeg_with_mpf()
    kept = image_headers.read(body).for_decoder(body)
    assert b"MPF\0" not in kept and Image.open(io.BytesIO(kept)).size == (64, 64)


@pytest.mark.parametrize("prefix, order", [(b"Exif\0\0Exif\0\0II*\0", "<"), (b"II\0*", "<"), (b"MM*\0", ">")])
def test_embedded_exif_orientation_is_read_as_pillow_reads_it(prefix, order):
    """Doubled "Exif" prefixes and a mis-ordered magic number: Pillow reads them, so does the walk."""
    directory = struct.pack(order + "IHHHIHHI", 8, 1, 0x0112, 3, 1, 6, 0, 0)  # IFD0: orientation 6
    body = _with_exif("PNG", prefix + directory)
    assert image_headers.read(body).orientation == Image.open(io.BytesIO(body)).getexif().get(0x0112) == 6


def test_imagemagick_raw_exif_text_gives_the_orientation():
    exif = Image.Exif()
    exif[0x0112] = 8
    hexed = exif.tobytes().hex()
    for zipped in (False, True):
        info = PngImagePlugin.PngInfo()
        info.add_text("Raw profile type exif", f"\nexif\n{len(hexed) // 2:8d}\n{hexed}\n", zip=zipped)
        buf = io.BytesIO()
        Image.new("RGB", (30, 20)).save(buf, "PNG", pnginfo=info)
        body = buf.getvalue()
        assert image_headers.read(body).orientation == Image.open(io.BytesIO(body)).getexif().get(0x0112) == 8


def test_a_simple_webp_keeps_its_trailing_exif_unread_as_libwebp_does():
    body = _with_exif("WEBP")
    exif = Image.Exif()
    exif[0x0112] = 6
    blob = exif.tobytes()
    body = body + b"EXIF" + struct.pack("<I", len(blob)) + blob + b"\0" * (len(blob) & 1)
    body = body[:4] + struct.pack("<I", len(body) - 8) + body[8:]
    assert body[12:16] != b"VP8X"
    assert image_headers.read(body).orientation == Image.open(io.BytesIO(body)).getexif().get(0x0112, 1) == 1


def _tiff_with_exif_directory(pointer_type: int = 4, exif_count: int = 2, interop_in_ifd0: bool = False) -> bytes:
    """An 8x8 grey TIFF whose IFD0 points at an Exif directory of exif_count entries (fewer in the file: truncated)."""
    body = bytearray(hostile.amplified_exif("tiff", tags=2, blob=16))
    ifd0_entry = 8 + 2 + 12 * 9  # the last IFD0 entry: the Exif pointer (0x8769)
    exif_at = struct.unpack_from("<I", body, ifd0_entry + 8)[0]
    struct.pack_into("<HHII", body, ifd0_entry, 0x8769, pointer_type, 1, exif_at)
    if interop_in_ifd0:
        struct.pack_into("<HHII", body, ifd0_entry, 0xA005, 4, 1, 8)
    struct.pack_into("<H", body, exif_at, exif_count)
    return bytes(body)


def test_a_tiff_exif_directory_pillow_would_load_must_be_well_formed():
    assert image_headers.read(_tiff_with_exif_directory()).format == "TIFF"
    with pytest.raises(Refused, match="pointer to its Exif directory is malformed"):
        image_headers.read(_tiff_with_exif_directory(pointer_type=8))  # SSHORT: the walk and Pillow would differ
    with pytest.raises(Refused, match="Exif directory is truncated|has no values"):
        image_headers.read(_tiff_with_exif_directory(exif_count=5000))
    with pytest.raises(Refused, match="Interop directory outside its Exif directory"):
        image_headers.read(_tiff_with_exif_directory(interop_in_ifd0=True))  # Pillow: KeyError, a 500


def test_a_tiff_counts_the_numbers_in_its_tags():
    header = image_headers.read(hostile.amplified_exif("tiff", tags=10, blob=8_000, value_type=5))
    assert header.values == 10 * 1000 + 8  # rationals, and IFD0's numbers (strip tags aside)
    with pytest.raises(Refused, match="numbers; the limit is 131072") as e:
        image_headers.read(hostile.amplified_exif("tiff", tags=200, blob=5_000, value_type=3))
    assert e.value.status == 413


def test_a_png_with_a_second_ihdr_is_refused():
    """A small IHDR after the pixels would make the walk count 8x8 while Pillow decodes the first's size."""
    big, small = hostile.one_bit_png(6000), hostile.one_bit_png(8)
    ihdr = slice(8, 33)  # after the signature: length, type, 13 bytes, CRC
    late = big[:big.rindex(b"IEND") - 4] + small[ihdr] + big[big.rindex(b"IEND") - 4:]
    with pytest.raises(Refused, match="IHDR chunk is not its first and only one"):
        image_headers.read(late)
    second = small[:8] + hostile._chunk(b"tEXt", b"a\0b") + small[8:]
    with pytest.raises(Refused, match="IHDR chunk is not its first and only one"):
        image_headers.read(second)
    with pytest.raises(Refused, match="no IHDR"):
        image_headers.read(small[:8] + small[33:])


def test_a_few_fill_bytes_pass_and_a_flood_is_refused():
    assert image_headers.read(hostile.jpeg_with_fill_bytes(1000)).pixels == 64 * 64
    with pytest.raises(Refused, match="fill bytes") as e:
        image_headers.read(hostile.jpeg_with_fill_bytes(image_headers.MAX_JPEG_FILL_BYTES + 1))
    assert e.value.status == 413


# --- where the walk and Pillow could read different files from one set of bytes ------------------
def _small_jpeg(**options) -> bytes:
    return encode(Image.new("RGB", (64, 48), "red"), "JPEG", **options)


@pytest.mark.parametrize("marker", [b"\xff\x00", b"\xff\xd8", b"\xff\xc8", b"\xff\xf0", b"\xff\xfd", b"\xff\xde",
                                    b"\xff\x01", b"\xff\xd9", b"\xff\x02"])
def test_a_marker_pillow_or_libjpeg_reads_without_a_length_is_refused_before_the_first_scan(marker):
    """Pillow reads SOI, EOI, JPG and JPGn without a length and skips FF00; a walk that read a length
    there would step over a frame header Pillow sees (or see one Pillow steps over)."""
    jpeg = _small_jpeg()
    hidden = jpeg[:2] + marker + struct.pack(">H", 2 + 19) + jpeg[jpeg.index(b"\xff\xc0"):][:19] + jpeg[2:]
    with pytest.raises(Refused, match="malformed: marker") as e:
        image_headers.read(hidden)
    assert e.value.status == 400


def test_a_second_frame_header_is_refused_and_a_frameless_file_too():
    jpeg = _small_jpeg()
    sof = jpeg.index(b"\xff\xc0")
    frame = jpeg[sof:sof + 2 + struct.unpack_from(">H", jpeg, sof + 2)[0]]
    big = frame[:5] + struct.pack(">HH", 6000, 6000) + frame[9:]  # Pillow sizes the image by the last
    with pytest.raises(Refused, match="more than one frame header"):
        image_headers.read(jpeg[:sof] + frame + big + jpeg[sof + len(frame):])
    with pytest.raises(Refused, match="no image data"):
        image_headers.read(jpeg[:jpeg.index(b"\xff\xda")])


def test_exif_after_the_first_scan_is_not_read_as_pillow_does_not_read_it():
    exif = Image.Exif()
    exif[0x0112] = 6
    segment = b"Exif\0\0" + exif.tobytes()
    jpeg = _small_jpeg()
    body = jpeg[:-2] + b"\xff\xe1" + struct.pack(">H", 2 + len(segment)) + segment + b"\xff\xd9"
    header = image_headers.read(body)
    assert header.orientation == Image.open(io.BytesIO(body)).getexif().get(0x0112, 1) == 1
    assert header.for_decoder(body) == body
    progressive = _small_jpeg(progressive=True)  # and scans after it are still counted
    late = progressive[:-2] + b"\xff\xe1" + struct.pack(">H", 2 + len(segment)) + segment + b"\xff\xd9"
    assert image_headers.read(late).scans == image_headers.read(progressive).scans > 1


def _exif_block(order: str, entries: list[tuple[int, int, int, bytes]]) -> bytes:
    o = "<" if order == "II" else ">"
    head = order.encode() + (b"*\0" if order == "II" else b"\0*") + struct.pack(o + "I", 8)
    body, extra = struct.pack(o + "H", len(entries)), b""
    values_at = 8 + 2 + 12 * len(entries) + 4
    for tag, kind, n, value in entries:
        if len(value) > 4:
            body += struct.pack(o + "HHII", tag, kind, n, values_at + len(extra))
            extra += value
        else:
            body += struct.pack(o + "HHI", tag, kind, n) + value.ljust(4, b"\0")
    return head + body + b"\0\0\0\0" + extra


def _pillow_orientation(block: bytes) -> int | None:
    exif = Image.Exif()
    exif.load(block)
    value = exif.get(0x0112)
    if value is None:
        return None
    try:
        return next((k for k in range(1, 9) if k == value), 0)  # as preprocessing's `in UPRIGHT` matches it
    except TypeError:
        return 0


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of each truncated block
def test_embedded_orientation_agrees_with_pillow_on_every_type_count_repeat_and_truncation():
    """Random IFD0s of orientation tags of every TIFF type (and some Pillow skips), counts 0 to 3,
    repeats, other tags and truncated blocks: the walk finds what Pillow's Exif finds, every time."""
    formats = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 11: "f", 12: "d", 13: "I", 16: "Q", 5: "II", 10: "ii"}
    rng = random.Random(23)
    for _ in range(3000):
        order = rng.choice(["II", "MM"])
        o = "<" if order == "II" else ">"
        entries = []
        for _ in range(rng.randint(0, 3)):
            kind, n = rng.choice(list(formats) + [2, 7, 14, 17]), rng.choice([0, 1, 1, 2, 3])
            if kind in formats:
                f = formats[kind]
                values = [rng.choice([6.0, 3.0, 2.5]) if f in "fd" else rng.choice([0, 1, 2, -6, 6]) if f in "ii"
                          else rng.choice([0, 1, 3, 6, 8, 9]) for _ in range(max(n, 1)) for _ in f]
                values = [abs(v) if f[0].isupper() else v for v in values]
                value = struct.pack(o + f * max(n, 1), *values)[:struct.calcsize(f) * n]
            else:
                value = b"6\0\0"[:n]
            entries.append((0x0112 if rng.random() < .8 else 0x010F, kind, n, value))
        block = _exif_block(order, entries)
        if rng.random() < .15:
            block = block[:rng.randint(8, len(block))]
        found = image_headers._embedded_orientation(block)
        assert (None if found is None else found if 1 <= found <= 8 else 0) == _pillow_orientation(block), entries


def _png(*chunks: bytes) -> bytes:
    png = encode(Image.new("L", (8, 8)), "PNG")
    return png[:33] + b"".join(chunks) + png[33:]


def _pillow_png_orientation(body: bytes) -> int:
    return Image.open(io.BytesIO(body)).getexif().get(0x0112, 1)


def test_png_metadata_orientation_is_read_as_pillow_keeps_it():
    def itxt(xmp: bytes, flag=0, method=0) -> bytes:
        text = zlib.compress(xmp) if flag else xmp
        return hostile._chunk(b"iTXt", b"XML:com.adobe.xmp\0" + bytes([flag, method]) + b"\0\0" + text)

    def xmp(n):
        return f'<x tiff:Orientation="{n}"/>'.encode()

    exif = Image.Exif()
    exif[0x0112] = 8
    hexed = exif.tobytes().hex()
    raw = hostile._chunk(b"tEXt", f"Raw profile type exif\0\nexif\n{len(hexed) // 2:8d}\n{hexed}\n".encode())
    for body, expected in [
        (_png(itxt(xmp(6)), itxt(xmp(3))), 3),  # the last XMP
        (_png(itxt(xmp(6)), itxt(xmp(3), flag=1, method=1)), 6),  # an unknown method: Pillow skips it
        (_png(itxt(xmp(6)), itxt(xmp(5), flag=1)), 5),
        (_png(raw), 8),
        (_png(hostile._chunk(b"eXIf", b""), raw, itxt(xmp(6))), 6),  # an empty eXIf hides the raw profile
    ]:
        assert image_headers.read(body).orientation == _pillow_png_orientation(body) == expected


def test_png_compressed_metadata_is_inflated_against_one_budget():
    with pytest.raises(Refused, match="more than one ICC profile"):
        image_headers.read(hostile.png_with_icc_chunks(2, 1000))
    assert image_headers.read(hostile.png_with_icc_chunks(1, 600_000)).format == "PNG"

    def ztxt(size):
        return hostile._chunk(b"zTXt", b"note\0\0" + zlib.compress(bytes(size)))
    with pytest.raises(Refused, match="inflates past 1048576 bytes") as e:
        image_headers.read(_png(ztxt((1 << 20) + 1)))  # Pillow refuses one chunk past 1 MiB
    assert e.value.status == 413
    budget = image_headers.MAX_INFLATED_METADATA
    assert image_headers.read(_png(*[ztxt(budget // 4)] * 4)).format == "PNG"
    with pytest.raises(Refused, match=f"inflates past {budget} bytes") as e:
        image_headers.read(_png(*[ztxt(budget // 4)] * 4, ztxt(10)))
    assert e.value.status == 413
    with pytest.raises(Refused, match="unknown method"):
        image_headers.read(_png(hostile._chunk(b"zTXt", b"note\0\1xx")))


def test_a_tiff_with_over_a_thousand_tags_is_refused():
    assert image_headers.read(hostile.tiff_with_many_tags(990)).format == "TIFF"
    with pytest.raises(Refused, match="tags in its directories") as e:
        image_headers.read(hostile.tiff_with_many_tags(1000))
    assert e.value.status == 413


@pytest.mark.parametrize("kind, fmt", [(8, "h"), (9, "i"), (4, "I")])
def test_a_tiff_orientation_of_another_integer_type_turns_its_size(kind, fmt):
    body = bytearray(hostile.amplified_exif("tiff", tags=2, blob=16))
    entry = next(8 + 2 + 12 * i for i in range(10) if struct.unpack_from("<H", body, 8 + 2 + 12 * i)[0] == 0x0112)
    struct.pack_into("<HHI" + fmt, body, entry, 0x0112, kind, 1, 6)
    struct.pack_into("<HHIH", body, 8 + 2, 256, 3, 1, 16)  # 16 wide, 8 high (the walk decodes nothing)
    header = image_headers.read(bytes(body))
    assert header.orientation == 6 and header.upright_size == (8, 16)
    assert Image.open(io.BytesIO(bytes(body))).getexif().get(0x0112) == 6


# --- the second review's findings -------------------------------------------------------------------
def _segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def test_a_lossless_jpeg_is_refused_before_pillow_drafts_it():
    """Drafting a lossless (SOF3) JPEG leaves Pillow's heap corrupt: the worker aborts later."""
    side = 600
    body = (b"\xff\xd8" + _segment(0xC3, struct.pack(">BHHB", 8, side, side, 1) + b"\1\x11\0")
            + _segment(0xC4, b"\0\1" + bytes(15) + b"\0") + _segment(0xDA, b"\1\1\0\1\0\0") + bytes(side * side // 8)
            + b"\xff\xd9")
    with pytest.raises(Refused, match="JPEG frame type SOF3") as e:
        image_headers.read(body)
    assert e.value.status == 400


def test_a_scan_of_fewer_components_than_the_frame_counts_as_several_scans():
    grey = encode(Image.new("L", (64, 48), 128), "JPEG")
    sof = grey.index(b"\xff\xc0")
    length = struct.unpack_from(">H", grey, sof + 2)[0]
    three = _segment(0xC0, struct.pack(">BHHB", 8, 48, 64, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]))
    partial = grey[:sof] + three + grey[sof + 2 + length:]  # its one scan codes one component of three
    assert image_headers.read(grey).scans == 1 and image_headers.read(partial).scans == 2  # full size in the cost


def _tiff_entries(entries: list[tuple[int, int, int, int]], tail: bytes = b"") -> bytes:
    return b"II*\0" + struct.pack("<IH", 8, len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + \
        b"\0\0\0\0" + tail


TIFF_8X8 = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8),
            (279, 4, 1, 64)]


@pytest.mark.parametrize("extra, message", [
    ((259, 3, 1, 5), "names tag 259 twice"),  # libtiff keeps the first, Pillow the last
    ((0xC000, 3, 0, 0), "has no values"),  # Pillow skips it
    ((0xC000, 99, 1, 0), "has type 99"),  # Pillow skips it
    ((0xC000, 1, 100, 0xFFFFFF00), "past the end of the file"),  # Pillow stops reading the directory there
])
def test_tiff_entries_its_readers_part_ways_on_are_refused(extra, message):
    assert image_headers.read(_tiff_entries(TIFF_8X8, bytes(64))).format == "TIFF"
    with pytest.raises(Refused, match=message) as e:
        image_headers.read(_tiff_entries(TIFF_8X8 + [extra], bytes(64)))
    assert e.value.status == 400


def test_each_structural_step_a_decoder_takes_in_python_is_counted():
    png = encode(Image.new("L", (1, 1)), "PNG")
    empty = hostile._chunk(b"IDAT", b"")
    with pytest.raises(Refused, match="over 20000 chunks"):
        image_headers.read(png[:png.rindex(b"IEND") - 4] + empty * 20_001 + png[png.rindex(b"IEND") - 4:])
    gif = encode(Image.new("P", (2, 2)), "GIF")
    at = gif.index(b",")
    with pytest.raises(Refused, match="structural entries"):  # an extension of one-byte sub-blocks
        image_headers.read(gif[:at] + b"!\x01" + b"\x01X" * 10_001 + b"\0" + gif[at:])
    jpeg = _small_jpeg()
    tables = _segment(0xDB, bytes([0]) + bytes(64)) * 300  # parsed in Python by Pillow's Image.open
    with pytest.raises(Refused, match="bytes of quantization tables"):
        image_headers.read(jpeg[:2] + tables + jpeg[2:])
    assert image_headers.read(hostile.rle_bmp(100)).extra == (2 * 100 + 1) * image_headers.BMP_RLE_CODE_COST
    assert image_headers.read(_tiff_entries(TIFF_8X8, bytes(64))).extra == image_headers.TIFF_STRIP_COST


def _exif_with(orientation: int, before: int = 0) -> bytes:
    entries = [(0x9000 + i % 0x1000, 3, 1, 0) for i in range(before)] + [(0x0112, 3, 1, orientation)]
    return b"II*\0" + struct.pack("<IH", 8, len(entries)) + b"".join(struct.pack("<HHIHH", t, k, n, v, 0)
                                                                     for t, k, n, v in entries) + b"\0\0\0\0"


def test_more_orientation_encodings_are_read_as_pillow_reads_them():
    xmp = b'<x tiff:Orientation="3"/>'
    for body in [
        _png(hostile._chunk(b"tEXt", b"exif\0" + _exif_with(6))),  # Pillow keeps a tEXt 'exif' as info["exif"]
        _png(hostile._chunk(b"tEXt", b'XML:com.adobe.xmp\0<x tiff:Orientation="6"/>'),
             hostile._chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\xff\0\0" + xmp)),  # not UTF-8: not kept by its key
        _png(hostile._chunk(b"eXIf", _exif_with(6, before=10_001))),  # Pillow reads every entry
    ]:
        assert image_headers.read(body).orientation == _pillow_png_orientation(body) == 6


def test_gif_and_webp_sizes_are_pillows():
    gif = bytearray(encode(Image.new("P", (10, 10)), "GIF"))
    struct.pack_into("<HH", gif, gif.index(b",") + 1, 5000, 5000)  # the first frame's offset
    assert image_headers.read(bytes(gif)).upright_size == Image.open(io.BytesIO(bytes(gif))).size == (5010, 5010)
    webp = encode(Image.new("RGB", (4, 3)), "WEBP", lossless=True)
    late = webp + b"VP8X" + struct.pack("<I", 10) + bytes(4) + (999).to_bytes(3, "little") * 2
    late = late[:4] + struct.pack("<I", len(late) - 8) + late[8:]  # a VP8X chunk only counts first
    exif = b"EXIF" + struct.pack("<I", len(_exif_with(6))) + _exif_with(6)
    for body in (late, webp + exif):  # an EXIF chunk past RIFF's size is not read
        header = image_headers.read(body)
        with Image.open(io.BytesIO(body)) as image:
            assert (header.upright_size, header.orientation) == (image.size, image.getexif().get(0x0112, 1))
