"""What an image file's own structure says, read from its bytes before any decoder sees them.

Pillow guesses a format by trying every plugin it has, and some plugins decode pixels while they
open a file (ICO decodes its frame inside Image.open), parse metadata at a cost that grows faster
than its size (a GIF comment's blocks are joined quadratically), or let libjpeg walk every block
once per scan (a progressive JPEG may repeat a scan header 400,000 times in 4 MB). So a file is
walked here first, marker by marker or chunk by chunk, without decompressing anything, and refused
unless it is one of FORMATS with a size, a scan count and metadata within the caps below. Only
then is it handed to Pillow, and only to the plugin of the format found here
(`Image.open(..., formats=[header.format])`).

The walk costs at most one step per structural entry, and entries are capped (MAX_ENTRIES): a
file of a few MB cannot make it slow.
"""
from __future__ import annotations

import dataclasses
import re
import struct
import zlib

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # Pillow's names; what docs/SERVING.md promises
SHOWN = "JPEG, PNG, WebP, BMP, GIF or TIFF"

# Real encoders write 1 scan (baseline), up to 4 (sequential, one per component) or 6 to 18
# (libjpeg's progressive script for grey, YCbCr and CMYK; mozjpeg's searched scripts stay near 10).
# libjpeg decodes every block of the image once per scan, so scans are capped with room to spare.
MAX_JPEG_SCANS = 64
# EXIF, ICC profiles, XMP, IPTC, text chunks and comments together. A camera's EXIF fits one JPEG
# segment (64 KiB); the largest ICC profiles seen on photos are a few hundred KiB.
MAX_METADATA_BYTES = 1024 * 1024
MAX_COMMENT_BYTES = 64 * 1024  # GIF comments: Pillow joins their 255-byte blocks quadratically
MAX_ENTRIES = 10_000  # markers, chunks, blocks or tags before the image data; real files have tens
MAX_TIFF_STRIPS = 16_384  # Pillow reads an uncompressed TIFF strip by strip, in Python
TIFF_COMPRESSIONS = {1: "none", 2: "CCITT RLE", 3: "CCITT G3", 4: "CCITT G4", 5: "LZW", 8: "Deflate",
                     32773: "PackBits", 32946: "Deflate"}  # each decodes in time linear in its pixels

ORIENTATION = 0x0112
SWAPS_AXES = (5, 6, 7, 8)


class Refused(ValueError):
    """A file not handed to a decoder: status 400 (not a served format, or malformed) or 413 (over a cap)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def too_costly(message: str) -> Refused:
    return Refused(message, 413)


@dataclasses.dataclass
class Header:
    format: str
    width: int
    height: int
    orientation: int = 1  # EXIF orientation, 1 when none
    scans: int = 1  # JPEG: scans in the file
    progressive: bool = False  # JPEG: libjpeg keeps every coefficient of the full-size image
    metadata: int = 0  # bytes of metadata blocks
    bits_per_pixel: int = 0  # PNG: what its decoder inflates per pixel (0: not known)
    interlaced: bool = False  # PNG: Adam7, decoded in seven passes
    weight: int = 1  # what a pixel costs against a C decoder's (BMP RLE: Pillow decodes it in Python)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation in SWAPS_AXES else (self.width, self.height)


def read(data: bytes) -> Header:
    """The header of an image in one of FORMATS; Refused for anything else or over a cap."""
    data = bytes(data)
    for magic, reader in _READERS:
        if data.startswith(magic):
            try:
                header = reader(data)
            except (struct.error, IndexError):
                raise Refused(f"the {reader.__name__[1:].upper()} file is truncated or malformed") from None
            if header.width < 1 or header.height < 1:
                raise Refused(f"the {header.format} header gives a size of {header.width}x{header.height}")
            if header.metadata > MAX_METADATA_BYTES:
                raise too_costly(f"the image carries {header.metadata} bytes of metadata (EXIF, ICC, XMP, text, "
                                 f"comments); the limit is {MAX_METADATA_BYTES}")
            return header
    raise Refused(f"not an image in a served format ({SHOWN})")


def _entries(count: int, what: str) -> None:
    if count > MAX_ENTRIES:
        raise too_costly(f"{what} has over {MAX_ENTRIES} structural entries before its image data")


# --- JPEG -----------------------------------------------------------------------------------------
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")  # not 0xff00 (stuffing), RSTn or fill bytes
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\0"
_FILL = re.compile(rb"\xff+")  # 0xFF bytes before a marker: any number is allowed, encoders write none
MAX_JPEG_FILL_BYTES = 64 * 1024  # Pillow's Image.open skips them in Python: 6 MB cost 2.7 s


def _jpeg(data: bytes) -> Header:
    header, pos, entries = None, 2, 0
    exif, xmp = b"", None
    metadata = scans = fill = 0
    while pos < len(data):
        entries += 1
        _entries(entries, "the JPEG")
        if data[pos] != 0xFF:
            raise Refused("the JPEG is malformed: no marker where one is due")
        run = _FILL.match(data, pos).end()
        fill += run - pos - 1
        if fill > MAX_JPEG_FILL_BYTES:  # Pillow reads the markers before the first scan a byte at a time
            raise too_costly(f"the JPEG has over {MAX_JPEG_FILL_BYTES} fill bytes between its markers")
        pos = run
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            continue
        (length,) = struct.unpack_from(">H", data, pos)
        segment = data[pos + 2:pos + length]
        if length < 2 or len(segment) != length - 2:
            raise Refused("the JPEG is truncated or malformed")
        pos += length
        if marker in _SOF:
            if header is None:
                _, height, width = struct.unpack_from(">BHH", segment)
                header = Header("JPEG", width, height, progressive=marker in _PROGRESSIVE)
        elif 0xE0 <= marker <= 0xEF or marker == 0xFE:
            metadata += length
            if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
                exif += segment[6:]  # Pillow joins every EXIF segment into one block
            elif marker == 0xE1 and segment.startswith(_JPEG_XMP) and xmp is None:
                xmp = segment
        elif marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise too_costly(f"the JPEG has over {MAX_JPEG_SCANS} scans (real encoders write at most about 20; "
                                 "each costs a pass over the whole image)")
            found = _NEXT_MARKER.search(data, pos)  # skip the entropy-coded data
            pos = found.start() if found else len(data)
    if header is None:
        raise Refused("the JPEG has no frame header")
    header.scans, header.metadata = max(scans, 1), metadata
    header.orientation = _orientation(_exif_tags(exif)[0], xmp)
    return header


# --- PNG ------------------------------------------------------------------------------------------
_PNG_METADATA = {b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf"}


def _png(data: bytes) -> Header:
    pos, entries, metadata, exif, xmp, header = 8, 0, 0, None, None, None
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            if header is not None or pos != 8:  # Pillow sizes the image by the first; the spec allows only one, first
                raise Refused("the PNG's IHDR chunk is not its first and only one")
            width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", body)
            channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
            header = Header("PNG", width, height, bits_per_pixel=channels * depth, interlaced=interlace == 1)
        elif kind in _PNG_METADATA:
            metadata += length
            if kind == b"eXIf":
                exif = body  # Pillow keeps the last
            elif kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\0") and xmp is None:
                xmp = _png_text(body)
        elif kind == b"IEND":
            break
        if kind not in (b"IDAT", b"fdAT"):  # image data may come in many chunks; Pillow streams them
            entries += 1
            _entries(entries, "the PNG")
        pos += 12 + length
    if header is None:
        raise Refused("the PNG has no IHDR chunk")
    header.metadata, header.orientation = metadata, _orientation(_exif_tags(exif)[0], xmp)
    return header


def _png_text(body: bytes) -> bytes:
    """An iTXt chunk's text, inflated (to at most MAX_METADATA_BYTES) when compressed."""
    _, _, rest = body.partition(b"\0")
    compressed, rest = rest[:1] == b"\1", rest[2:]
    text = rest.split(b"\0", 2)[-1]  # after the language tag and the translated keyword
    if not compressed:
        return text
    try:
        return zlib.decompressobj().decompress(text, MAX_METADATA_BYTES)
    except zlib.error:
        return b""


# --- GIF ------------------------------------------------------------------------------------------
def _sub_blocks(data: bytes, pos: int) -> tuple[int, int]:
    """(position after a run of sub-blocks, bytes of data in them)."""
    size = 0
    while data[pos]:
        size += data[pos]
        pos += data[pos] + 1
    return pos + 1, size


def _gif(data: bytes) -> Header:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    metadata = comments = entries = 0
    while True:  # up to the first image: Pillow opens and decodes only the first frame
        entries += 1
        _entries(entries, "the GIF")
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks
            label = data[pos + 1]
            pos, size = _sub_blocks(data, pos + 2)
            if label == 0xFE:
                comments += size
                if comments > MAX_COMMENT_BYTES:
                    raise too_costly(f"the GIF carries over {MAX_COMMENT_BYTES} bytes of comments")
            if label in (0xFE, 0xFF):  # comments, application data (XMP)
                metadata += size
        elif block == 0x2C:  # the first image descriptor: its size may exceed the screen's
            frame_width, frame_height = struct.unpack_from("<HH", data, pos + 5)
            return Header("GIF", max(width, frame_width), max(height, frame_height), metadata=metadata)
        else:
            raise Refused("the GIF has no image" if block == 0x3B else "the GIF is malformed")


# --- WebP -----------------------------------------------------------------------------------------
def _webp(data: bytes) -> Header:
    if data[8:12] != b"WEBP":
        raise Refused(f"not an image in a served format ({SHOWN})")
    pos, entries, metadata, exif, xmp, size = 12, 0, 0, None, None, None
    while pos + 8 <= len(data):
        entries += 1
        _entries(entries, "the WebP")
        kind, length = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if kind == b"VP8X":
            size = (int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1)
        elif kind == b"VP8 " and size is None:
            if body[3:6] != b"\x9d\x01\x2a":
                raise Refused("the WebP's VP8 frame is malformed")
            w, h = struct.unpack_from("<HH", body, 6)
            size = (w & 0x3FFF, h & 0x3FFF)
        elif kind == b"VP8L" and size is None:
            bits = int.from_bytes(body[1:5], "little")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif kind in (b"ICCP", b"EXIF", b"XMP "):
            metadata += length
            if kind == b"EXIF" and exif is None:
                exif = body[6:] if body.startswith(b"Exif\0\0") else body
            elif kind == b"XMP " and xmp is None:
                xmp = body
        pos += 8 + length + (length & 1)
    if size is None:
        raise Refused("the WebP has no image")
    return Header("WEBP", *size, orientation=_orientation(_exif_tags(exif)[0], xmp), metadata=metadata)


# --- BMP ------------------------------------------------------------------------------------------
# Pillow's RLE8/RLE4 decoder is Python, a loop step a pixel where a row ends early: 0.2 us a pixel
# (4 Mpx in 0.8 s on 2 cores) against 0.006 for an uncompressed BMP; counted at 25 times its pixels.
BMP_RLE_WEIGHT = 25


def _bmp(data: bytes) -> Header:
    (info,) = struct.unpack_from("<I", data, 14)
    if info == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", data, 18)
        return Header("BMP", width, height)
    width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
    return Header("BMP", width, abs(height), weight=BMP_RLE_WEIGHT if compression in (1, 2) else 1)


# --- TIFF, and the TIFF structure inside EXIF blocks -------------------------------------------------
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_STRIPS = (273, 279, 324, 325)  # strip/tile offsets and byte counts: image data, not metadata
# Directories Pillow loads besides IFD0 (Exif.get_ifd, and every one a TIFF names while it loads):
# Exif, GPS, and Interop (found inside the Exif directory).
_SUB_IFDS = (0x8769, 0x8825, 0xA005)
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # the pattern Image.getexif() uses


@dataclasses.dataclass
class _Tiff:
    tags: dict[int, tuple[int, int, int]]  # IFD0: {tag: (type, count, first value)}
    values: int  # bytes of out-of-line values in IFD0 and the sub-directories, image data excluded


def _ifd(data: bytes, order: str, offset: int) -> tuple[dict[int, tuple[int, int, int]], int]:
    """One directory: ({tag: (type, count, first value)}, bytes Pillow copies out for its values).

    Pillow reads each value that does not fit in its entry as a separate copy, so a thousand tags
    that all point at one 500 KB blob cost 500 MB: values are counted per tag, not per byte of file.
    A value reaching past the end is skipped by Pillow too ("Possibly corrupt EXIF data")."""
    (count,) = struct.unpack_from(order + "H", data, offset)
    _entries(count, "the TIFF directory")
    tags, values = {}, 0
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", data, offset + 2 + 12 * i)
        value = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, offset + 10 + 12 * i)[0]
        tags[tag] = (kind, n, value)
        size = _TYPE_SIZES.get(kind, 1) * n
        if size > 4 and tag not in _STRIPS:
            pointer = struct.unpack_from(order + "I", data, offset + 10 + 12 * i)[0]
            values += size if pointer + size <= len(data) else 0
    return tags, values


def _tiff_structure(data: bytes) -> _Tiff:
    """IFD0 of a TIFF structure (a TIFF file, or an EXIF block), with the value bytes of it and
    of the sub-directories Pillow loads."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or struct.unpack_from(order + "H", data, 2)[0] != 42:
        raise Refused("the TIFF structure is not classic TIFF (BigTIFF is not served)")
    tags, values = _ifd(data, order, struct.unpack_from(order + "I", data, 4)[0])
    pending, seen = [tags], set()
    while pending:
        directory = pending.pop()
        for tag in _SUB_IFDS:
            if tag in directory and directory[tag][2] not in seen:
                seen.add(directory[tag][2])
                try:
                    sub, more = _ifd(data, order, directory[tag][2])
                except struct.error:
                    continue  # Pillow skips a directory it cannot read
                values += more
                pending.append(sub)
    if values > MAX_METADATA_BYTES:
        raise too_costly(f"the image's EXIF or TIFF tags hold {values} bytes of values (each copied out once per "
                         f"tag that points at it); the limit is {MAX_METADATA_BYTES}")
    return _Tiff(tags, values)


def _orientation(tags: dict, xmp: bytes | None = None) -> int:
    """EXIF orientation, else XMP's tiff:Orientation (as Image.getexif()); 1 when neither says."""
    if ORIENTATION in tags:
        orientation = tags[ORIENTATION][2]
    else:
        found = _XMP_ORIENTATION.search(xmp) if xmp else None
        orientation = int(found[2]) if found else 1
    return orientation if 1 <= orientation <= 8 else 1


def _exif_tags(exif: bytes | None) -> tuple[dict, int]:
    """IFD0 tags and value bytes of an embedded EXIF block; ({}, 0) when there is none or it is unreadable."""
    if not exif:
        return {}, 0
    try:
        found = _tiff_structure(exif)
    except struct.error:
        return {}, 0  # unreadable EXIF: Pillow ignores it too
    except Refused as e:
        if e.status == 413:
            raise
        return {}, 0
    return found.tags, found.values


def _tiff(data: bytes) -> Header:
    found = _tiff_structure(data)
    tags = found.tags
    if 256 not in tags or 257 not in tags:
        raise Refused("the TIFF has no image size")
    compression = tags.get(259, (3, 1, 1))[2]
    if compression not in TIFF_COMPRESSIONS:
        raise Refused(f"TIFF compression {compression} is not served (only "
                      f"{', '.join(sorted(set(TIFF_COMPRESSIONS.values())))}); send the image as JPEG or PNG")
    strips = max(tags.get(273, (4, 0, 0))[1], tags.get(324, (4, 0, 0))[1])
    if strips > MAX_TIFF_STRIPS:
        raise too_costly(f"the TIFF has {strips} strips or tiles; the limit is {MAX_TIFF_STRIPS}")
    xmp = None
    if 700 in tags:
        kind, n, pointer = tags[700]
        xmp = data[pointer:pointer + n] if n > 4 else None
    return Header("TIFF", tags[256][2], tags[257][2], orientation=_orientation(tags, xmp), metadata=found.values)


_READERS = ((b"\xff\xd8\xff", _jpeg), (b"\x89PNG\r\n\x1a\n", _png), (b"GIF87a", _gif), (b"GIF89a", _gif),
            (b"RIFF", _webp), (b"BM", _bmp), (b"II*\0", _tiff), (b"MM\0*", _tiff))
