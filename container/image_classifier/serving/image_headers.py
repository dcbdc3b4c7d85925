"""What an image file's own structure says, read from its bytes before any decoder sees them.

Pillow guesses a format by trying every plugin it has, and some plugins decode pixels while they
open a file (ICO decodes its frame inside Image.open), parse metadata at a cost that grows faster
than its size (a GIF comment's blocks are joined quadratically), or let libjpeg walk every block
once per scan (a progressive JPEG may repeat a scan header 400,000 times in 4 MB). So a file is
walked here first, marker by marker or chunk by chunk, without decompressing anything, and refused
unless it is one of FORMATS with a size, a scan count and metadata within the caps below. Only
then is it handed to Pillow, and only to the plugin of the format found here
(`Image.open(..., formats=[header.format])`), and without the parts Pillow would parse at a cost
their size does not bound (a JPEG's EXIF and MPF segments: Header.for_decoder); the orientation
serving needs is read here instead, as Pillow reads it.

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
    values: int = 0  # TIFF: numbers in its tags, each unpacked into a Python object while it loads
    extra: int = 0  # pixels' worth of structure a decoder walks in Python (TIFF strips, BMP run-length codes)
    drop: tuple[tuple[int, int], ...] = ()  # byte spans the decoder does not get (for_decoder)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation in SWAPS_AXES else (self.width, self.height)

    def for_decoder(self, data: bytes) -> bytes:
        """The file as the decoder gets it: a JPEG without its EXIF and MPF segments, which Pillow
        would otherwise parse inside Image.open (EXIF for a DPI, MPF for the pictures of an MPO),
        at a cost their size does not bound. The walk has read what serving needs from them."""
        if not self.drop:
            return data
        kept, last = [], 0
        for start, end in self.drop:
            kept.append(data[last:start])
            last = end
        kept.append(data[last:])
        return b"".join(kept)


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


# --- JPEG ---------------------------------------------------------------------------------------
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")  # not 0xff00 (stuffing), RSTn or fill bytes
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
# Huffman-coded baseline, extended sequential and progressive frames: what cameras and encoders
# write. Lossless (SOF3) decodes, but a drafted one leaves Pillow's heap corrupt (libjpeg-turbo
# 3.1: the worker aborts a few requests later); arithmetic and hierarchical frames are unused.
_SERVED_FRAMES = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive"}
MAX_JPEG_TABLE_BYTES = 16 * 1024  # DQT before the first scan, parsed by Pillow in Python; real files: under 1 KiB
_RST = set(range(0xD0, 0xD8))
# Markers with a length that both Pillow (JpegImagePlugin.MARKER) and libjpeg (jdmarker.c) read as
# such: frames, tables (DHT, DAC, DQT, DNL, DRI), scans, APPn and COM. Pillow reads the others as
# length-less (a second SOI, EOI, JPG, JPGn) or fails (FF01 to FFBF, DHP, EXP), and libjpeg fails on
# all of them; a walk that read a length for one would see other segments than Pillow does.
_SEGMENTS = _SOF | {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD} | set(range(0xE0, 0xF0)) | {0xFE}
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\0"
_FILL = re.compile(rb"\xff+")  # 0xFF bytes before a marker: any number is allowed, encoders write none
MAX_JPEG_FILL_BYTES = 64 * 1024  # Pillow's Image.open skips them in Python: 6 MB cost 2.7 s


def _jpeg(data: bytes) -> Header:
    header, pos, entries, components = None, 2, 0, 0
    exif, xmp, drop = b"", None, []
    metadata = scans = fill = tables = 0
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
        start, pos = pos - 1, pos + 1
        if marker == 0xD9 and scans:  # EOI; what follows (an MPO's other pictures) is not decoded
            break
        if marker in _RST or (marker == 0x01 and scans):  # no length (Pillow fails on TEM before a scan)
            continue
        if marker not in _SEGMENTS:
            raise Refused(f"the JPEG is malformed: marker FF{marker:02X} "
                          f"{'before its first scan' if not scans else 'between its scans'}")
        (length,) = struct.unpack_from(">H", data, pos)
        segment = data[pos + 2:pos + length]
        if length < 2 or len(segment) != length - 2:
            raise Refused("the JPEG is truncated or malformed")
        pos += length
        if marker in _SOF:
            if header is not None:  # Pillow sizes the image by the last, libjpeg refuses a second
                raise Refused("the JPEG has more than one frame header")
            if marker not in _SERVED_FRAMES:
                raise Refused(f"JPEG frame type SOF{marker - 0xC0} (lossless, arithmetic-coded or hierarchical) is "
                              "not served; send a baseline or progressive JPEG, or a PNG")
            _, height, width, components = struct.unpack_from(">BHHB", segment)
            header = Header("JPEG", width, height, progressive=marker in _PROGRESSIVE)
        elif marker == 0xDB and not scans:
            tables += length
            if tables > MAX_JPEG_TABLE_BYTES:
                raise too_costly(f"the JPEG has over {MAX_JPEG_TABLE_BYTES} bytes of quantization tables")
        elif 0xE0 <= marker <= 0xEF or marker == 0xFE:
            metadata += length
            if scans:  # Pillow reads none after the first scan
                continue
            if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
                exif += segment if not exif else segment[6:]  # Pillow joins every EXIF segment into one block
                drop.append((start, pos))
            elif marker == 0xE2 and segment.startswith(b"MPF\0"):
                drop.append((start, pos))
            elif marker == 0xE1 and segment.startswith(_JPEG_XMP):
                xmp = segment  # Pillow keeps the last
        elif marker == 0xDA:
            if header is None:
                raise Refused("the JPEG has a scan before its frame header")
            if not scans and segment[0] < components:  # not interleaved: libjpeg buffers the whole image,
                scans += 1  # as for several scans, so it counts at full size (decode_cost)
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise too_costly(f"the JPEG has over {MAX_JPEG_SCANS} scans (real encoders write at most about 20; "
                                 "each costs a pass over the whole image)")
            found = _NEXT_MARKER.search(data, pos)  # skip the entropy-coded data
            pos = found.start() if found else len(data)
    if not scans:
        raise Refused("the JPEG has no image data (no scan)" if header else "the JPEG has no frame header")
    header.scans, header.metadata, header.drop = scans, metadata, tuple(drop)
    header.orientation = _orientation(_embedded_orientation(exif or None), xmp)
    return header


# --- PNG ------------------------------------------------------------------------------------------
_PNG_METADATA = {b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf"}
# Pillow inflates every compressed text chunk and ICC profile while it opens a PNG, each up to 1 MiB
# and with no limit on their sum: a thousand 1 KB iCCP chunks cost it 2.3 s. The walk inflates them
# first, against one budget for the file.
MAX_INFLATED_METADATA = 4 * 1024 * 1024
_PNG_CHUNK_TEXT = 1024 * 1024  # PngImagePlugin.MAX_TEXT_CHUNK: Pillow fails on a chunk that inflates past it
MAX_PNG_DATA_CHUNKS = 20_000  # encoders write 8 to 64 KiB each: 6 MB is under 800 of them
_XMP_KEY = b"XML:com.adobe.xmp"
_RAW_EXIF_KEY = b"Raw profile type exif"


def _png(data: bytes) -> Header:
    pos, entries, metadata, header, profiles, data_chunks = 8, 0, 0, None, 0, 0
    texts = _PngTexts()
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
            if kind == b"iCCP":
                profiles += 1
                if profiles > 1:  # the spec allows one
                    raise Refused("the PNG has more than one ICC profile (iCCP chunk)")
            texts.read(kind, body)
        elif kind == b"IEND":
            break
        if kind not in (b"IDAT", b"fdAT"):  # image data may come in many chunks; Pillow streams them
            entries += 1
            _entries(entries, "the PNG")
        else:
            data_chunks += 1  # a loop step each in Pillow's Python, however small
            if data_chunks > MAX_PNG_DATA_CHUNKS:
                raise too_costly(f"the PNG's image data comes in over {MAX_PNG_DATA_CHUNKS} chunks")
        pos += 12 + length
    if header is None:
        raise Refused("the PNG has no IHDR chunk")
    header.metadata, header.orientation = metadata, texts.orientation()
    return header


class _PngTexts:
    """What Pillow's PngStream keeps of a PNG's metadata chunks (the last of each key), and the
    compressed ones inflated against MAX_INFLATED_METADATA."""

    def __init__(self):
        self.inflated = 0
        self.exif: bytes | None = None  # eXIf
        self.keys: dict[bytes, bytes] = {}  # text by key, as its str in Image.info
        self.xmp: bytes | None = None  # iTXt XMP, as Image.info["xmp"]

    def read(self, kind: bytes, body: bytes) -> None:
        if kind == b"eXIf":
            self.exif = body
            return
        key, _, rest = body.partition(b"\0")
        if kind == b"iCCP":
            self._inflate(rest[1:], rest[:1])
        elif kind == b"tEXt":
            self.keys[key] = rest
            if key == b"exif":  # Pillow keeps this one's bytes as info["exif"], as an eXIf chunk's
                self.exif = rest
        elif kind == b"zTXt":
            self.keys[key] = self._inflate(rest[1:], rest[:1] or b"\0") or b""
        elif len(rest) >= 2:  # iTXt: flag, method, language, translated keyword, text
            flag, method, rest = rest[0], rest[1], rest[2:]
            parts = rest.split(b"\0", 2)
            if len(parts) < 3 or (flag and method):  # Pillow skips an unknown method here
                return
            text = parts[2] if not flag else self._inflate(parts[2], b"\0")
            if text is None:
                return
            if key == _XMP_KEY:
                self.xmp = text
            try:  # Pillow keeps the text under its key only when all of it is UTF-8
                parts[0].decode("utf-8"), parts[1].decode("utf-8"), text.decode("utf-8")
            except UnicodeDecodeError:
                return
            self.keys[key] = text

    def _inflate(self, data: bytes, method: bytes) -> bytes | None:
        if method != b"\0":  # Pillow fails to open it (a SyntaxError)
            raise Refused("the PNG has a chunk compressed by an unknown method")
        left = MAX_INFLATED_METADATA - self.inflated
        try:
            inflater = zlib.decompressobj()
            text = inflater.decompress(data, min(left, _PNG_CHUNK_TEXT) + 1)
        except zlib.error:
            return None  # Pillow keeps no text for it
        self.inflated += len(text)
        if len(text) > _PNG_CHUNK_TEXT:
            raise too_costly(f"a PNG text or ICC chunk inflates past {_PNG_CHUNK_TEXT} bytes")
        if self.inflated > MAX_INFLATED_METADATA:
            raise too_costly(f"the PNG's compressed metadata inflates past {MAX_INFLATED_METADATA} bytes")
        return text

    def orientation(self) -> int:
        """As Image.getexif(): eXIf, else ImageMagick's hex raw profile; else XMP's."""
        exif = self.exif
        if exif is None and _RAW_EXIF_KEY in self.keys:
            try:
                exif = bytes.fromhex("".join(self.keys[_RAW_EXIF_KEY].decode("latin-1").split("\n")[3:]))
            except ValueError:
                exif = None  # Pillow fails on it, in getexif() only
        return _orientation(_embedded_orientation(exif), self.keys.get(_XMP_KEY) or self.xmp)


# --- GIF ------------------------------------------------------------------------------------------
def _sub_blocks(data: bytes, pos: int) -> tuple[int, int, int]:
    """(position after a run of sub-blocks, bytes of data in them, how many)."""
    size = count = 0
    while data[pos]:
        size += data[pos]
        count += 1
        pos += data[pos] + 1
    return pos + 1, size, count


def _gif(data: bytes) -> Header:
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    metadata = comments = entries = 0
    while True:  # up to the first image: Pillow opens and decodes only the first frame
        entries += 1
        _entries(entries, "the GIF")
        block = data[pos]
        if block == 0x21:  # extension: label, then sub-blocks (each a loop step in Pillow)
            label = data[pos + 1]
            pos, size, count = _sub_blocks(data, pos + 2)
            if label == 0xFE:
                comments += size
                if comments > MAX_COMMENT_BYTES:
                    raise too_costly(f"the GIF carries over {MAX_COMMENT_BYTES} bytes of comments")
            entries += count
            _entries(entries, "the GIF")
            if label in (0xFE, 0xFF):  # comments, application data (XMP)
                metadata += size
        elif block == 0x2C:  # the first image descriptor: Pillow grows the screen to hold it
            left, top, frame_width, frame_height = struct.unpack_from("<HHHH", data, pos + 1)
            return Header("GIF", max(width, left + frame_width), max(height, top + frame_height), metadata=metadata)
        else:
            raise Refused("the GIF has no image" if block == 0x3B else "the GIF is malformed")


# --- WebP -----------------------------------------------------------------------------------------
def _webp(data: bytes) -> Header:
    if data[8:12] != b"WEBP":
        raise Refused(f"not an image in a served format ({SHOWN})")
    pos, entries, metadata, exif, xmp, size = 12, 0, 0, None, None, None
    extended = data[12:16] == b"VP8X"
    end = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])  # libwebp reads no further than RIFF's size
    while pos + 8 <= end:
        entries += 1
        _entries(entries, "the WebP")
        kind, length = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if kind == b"VP8X" and pos == 12:  # only as the first chunk
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
                exif = body
            elif kind == b"XMP " and xmp is None:
                xmp = body
        pos += 8 + length + (length & 1)
    if size is None:
        raise Refused("the WebP has no image")
    if not extended:  # libwebp reads metadata chunks only in the extended format (a VP8X chunk first)
        exif = xmp = None
    return Header("WEBP", *size, orientation=_orientation(_embedded_orientation(exif), xmp), metadata=metadata)


# --- BMP ------------------------------------------------------------------------------------------
# Pillow's RLE8/RLE4 decoder is Python, a loop step a pixel where a row ends early: 0.2 us a pixel
# (4 Mpx in 0.8 s on 2 cores) against 0.006 for an uncompressed BMP; counted at 25 times its pixels.
BMP_RLE_WEIGHT = 25
BMP_RLE_CODE_COST = 40  # pixels' worth a two-byte code costs it (0.44 us), whatever it draws


def _bmp(data: bytes) -> Header:
    (info,) = struct.unpack_from("<I", data, 14)
    if info == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", data, 18)
        return Header("BMP", width, height)
    width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression not in (1, 2):
        return Header("BMP", width, abs(height))
    (offset,) = struct.unpack_from("<I", data, 10)
    return Header("BMP", width, abs(height), weight=BMP_RLE_WEIGHT,
                  extra=max(0, len(data) - offset) // 2 * BMP_RLE_CODE_COST)


# --- TIFF, and the TIFF structure inside EXIF blocks -------------------------------------------------
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_NUMBERS = {3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 16, 17, 18}  # unpacked a number at a time (bytes and text are not)
_STRIPS = (273, 279, 324, 325)  # strip/tile offsets and byte counts: image data, not metadata
# Directories Pillow loads besides IFD0 while it loads a TIFF (TiffTags.TAGS_V2_GROUPS): Exif, GPS,
# and Interop, which Exif.get_ifd looks up inside the Exif directory.
EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # the pattern Image.getexif() uses
MAX_TIFF_VALUES = 1 << 17  # numbers in a TIFF's tags; each also counts in the request's cost
# Tags in the directories Pillow loads: libtiff's directory reader is quadratic in them (4,000
# unknown tags cost it 0.6 s); cameras and scanners write tens, with EXIF under 200.
MAX_TIFF_TAGS = 1000
TIFF_STRIP_COST = 500  # pixels' worth a strip or tile costs (Pillow and libtiff set each up in turn: 6 us)


@dataclasses.dataclass
class _Directory:
    tags: dict[int, tuple[int, int, int]]  # {tag: (type, count, first value or offset)}
    value_bytes: int = 0  # bytes Pillow copies out for the values that do not fit in their entries
    numbers: int = 0  # numbers Pillow unpacks


def _ifd(data: bytes, order: str, offset: int) -> _Directory:
    """One directory of a TIFF file, read as Pillow's ImageFileDirectory_v2 reads it: each value
    that does not fit in its entry is a separate copy, so a thousand tags that all point at one
    500 KB blob cost 500 MB: values are counted per tag, not per byte of file."""
    (count,) = struct.unpack_from(order + "H", data, offset)
    _entries(count, "the TIFF directory")
    found = _Directory({})
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", data, offset + 2 + 12 * i)
        # Where Pillow and libtiff part ways, no encoder goes: Pillow skips a tag of a type it does
        # not read or with no values and stops at a value past the end, and of repeated tags Pillow
        # keeps the last and libtiff the first. Either would let the walk count another file.
        if kind not in _VALUE_FORMATS or n == 0:
            raise Refused(f"the TIFF's tag {tag} has {f'type {kind}' if n else 'no values'}, which its readers "
                          "treat differently")
        if tag in found.tags:
            raise Refused(f"the TIFF names tag {tag} twice in one directory")
        size = _TYPE_SIZES[kind] * n
        value = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, offset + 10 + 12 * i)[0]
        if size > 4 and value + size > len(data):
            raise Refused(f"the TIFF's tag {tag} has values past the end of the file")
        found.tags[tag] = (kind, n, value)
        if tag in _STRIPS:
            continue
        found.value_bytes += size if size > 4 else 0
        found.numbers += n if kind in _NUMBERS else 0
    return found


def _tiff_structure(data: bytes) -> _Directory:
    """A TIFF file's IFD0, with the value bytes and numbers of it and of the directories Pillow
    loads with the pixels. Those must be well-formed: Pillow would read them, or fail with a 500."""
    order = "<" if data[:2] == b"II" else ">"
    ifd0 = _ifd(data, order, struct.unpack_from(order + "I", data, 4)[0])
    total = dataclasses.replace(ifd0)
    directories = {0: ifd0}
    for parent, tag in ((0, EXIF_IFD), (0, GPS_IFD), (EXIF_IFD, INTEROP_IFD)):
        if parent not in directories or tag not in directories[parent].tags:
            continue
        kind, n, offset = directories[parent].tags[tag]
        if kind not in (4, 13) or n != 1:
            raise Refused(f"the TIFF's pointer to its {_NAMES[tag]} directory is malformed")
        try:
            directories[tag] = sub = _ifd(data, order, offset)
        except struct.error:
            raise Refused(f"the TIFF's {_NAMES[tag]} directory is truncated") from None
        total.value_bytes += sub.value_bytes
        total.numbers += sub.numbers
    if INTEROP_IFD in ifd0.tags and INTEROP_IFD not in directories:  # Pillow fails on it with a KeyError
        raise Refused("the TIFF names an Interop directory outside its Exif directory")
    if total.value_bytes > MAX_METADATA_BYTES:
        raise too_costly(f"the TIFF's tags hold {total.value_bytes} bytes of values (each copied out once per tag "
                         f"that points at it); the limit is {MAX_METADATA_BYTES}")
    tags = sum(len(d.tags) for d in directories.values())  # no tag repeats in a directory (_ifd)
    if tags > MAX_TIFF_TAGS:
        raise too_costly(f"the TIFF has {tags} tags in its directories; the limit is {MAX_TIFF_TAGS}")
    if total.numbers > MAX_TIFF_VALUES:
        raise too_costly(f"the TIFF's tags hold {total.numbers} numbers; the limit is {MAX_TIFF_VALUES}")
    return total


_NAMES = {EXIF_IFD: "Exif", GPS_IFD: "GPS", INTEROP_IFD: "Interop"}


# How Pillow's ImageFileDirectory_v2 unpacks one value of each type it reads (it skips the others):
# rationals as (numerator, denominator); bytes (BYTE, UNDEFINED) and text as no number.
_VALUE_FORMATS = {3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 11: "f", 12: "d", 13: "I", 16: "Q",
                  5: "II", 10: "ii", 1: None, 2: None, 7: None}


def _embedded_orientation(exif: bytes | None) -> int | None:
    """The orientation tag of an EXIF block's IFD0, read as Pillow's Exif.load reads it (repeated
    "Exif" prefixes, either byte order, a mis-ordered magic number; of repeated tags the last,
    skipping those of a type it does not read or with no values, stopping at values past the end;
    of several values the first); 0 when the tag holds no number, None when absent or unreadable.
    Only this is read: Pillow parses no embedded EXIF while serving (a JPEG's is taken out before
    it opens the file: Header.for_decoder), so its size costs a worker nothing."""
    while exif and exif.startswith(b"Exif\0\0"):
        exif = exif[6:]
    if not exif or exif[:2] not in (b"II", b"MM") or exif[2:4] not in (b"*\0", b"\0*"):
        return None  # not classic TIFF (Pillow reads BigTIFF EXIF too, but no camera writes it)
    order = "<" if exif[:2] == b"II" else ">"
    found = None
    try:
        (offset,) = struct.unpack_from(order + "I", exif, 4)
        (count,) = struct.unpack_from(order + "H", exif, offset)
        for i in range(count):  # at most 65,535, as Pillow reads them all
            tag, kind, n, inline = struct.unpack_from(order + "HHI4s", exif, offset + 2 + 12 * i)
            if kind not in _VALUE_FORMATS or n == 0:
                continue
            size = _TYPE_SIZES[kind]
            if size * n > 4:
                (at,) = struct.unpack_from(order + "I", inline)
                if at + size * n > len(exif):
                    break  # Pillow's read fails there, and it keeps the entries before
                inline = exif[at:at + size]
            if tag == ORIENTATION:
                found = (kind, inline[:size])
    except struct.error:
        pass  # Pillow keeps the entries read before the damage
    if found is None:
        return None
    kind, raw = found
    if _VALUE_FORMATS[kind] is None:
        return 0
    value = struct.unpack(order + _VALUE_FORMATS[kind], raw)
    if kind in (5, 10):  # Pillow's IFDRational equals an int when it divides exactly
        return value[0] // value[1] if value[1] and value[0] % value[1] == 0 else 0
    return int(value[0]) if float(value[0]).is_integer() else 0


def _orientation(exif: int | None, xmp: bytes | None = None) -> int:
    """EXIF's orientation if the tag is there, else XMP's tiff:Orientation (as Image.getexif()); 1
    when neither says, or what they say is not an orientation."""
    if exif is None:
        found = _XMP_ORIENTATION.search(xmp) if xmp else None
        exif = int(found[2]) if found else 1
    return exif if 1 <= exif <= 8 else 1


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
    orientation = _embedded_orientation(data)  # IFD0, read as Pillow reads it
    xmp = None
    if 700 in tags and tags[700][1] > 4:
        _, n, pointer = tags[700]
        xmp = data[pointer:pointer + n]
    return Header("TIFF", tags[256][2], tags[257][2], orientation=_orientation(orientation, xmp),
                  metadata=found.value_bytes, values=found.numbers, extra=strips * TIFF_STRIP_COST)


_READERS = ((b"\xff\xd8\xff", _jpeg), (b"\x89PNG\r\n\x1a\n", _png), (b"GIF87a", _gif), (b"GIF89a", _gif),
            (b"RIFF", _webp), (b"BM", _bmp), (b"II*\0", _tiff), (b"MM\0*", _tiff))
