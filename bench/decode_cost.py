"""What the costliest images the serving limits admit cost a worker, in process: the handler's
`input_fn` (header checks, decode, preprocessing to the model's input) on one thread, against a
real photo (an imagewoof10 test JPEG) in the same run.

    python bench/decode_cost.py [--side 6300] [--repeats 3]

Each format at the largest size MAX_IMAGE_PIXELS and MAX_REQUEST_PIXELS admit (defaults: 40 Mpx,
counted as docs/SERVING.md says), and the attack files the limits refuse, for contrast.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
import types
from pathlib import Path

import torch
from common import DATA, RESULTS, write
import hostile_images as hostile
from PIL import Image
from sagemaker_inference.errors import GenericInferenceToolkitError

from image_classifier.preprocessing import Preprocessing, eval_transform
from image_classifier.serving import inference

# EfficientNet-Lite0's preprocessing (the default backbone's input: 224 crop of a 256 resize)
PRE = Preprocessing(224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def cases(side: int, photo: bytes) -> list[tuple[str, bytes, str]]:
    rgba8, rgba16 = int(side * (3 / 4) ** 0.5), int(side * (3 / 8) ** 0.5)  # count 4/3 and 8/3 of their pixels
    return [
        ("baseline: a real photo (imagewoof10 test JPEG)", photo, "image/jpeg"),
        (f"1-bit PNG {side}x{side}", hostile.one_bit_png(side), "image/png"),
        (f"8-bit RGBA PNG {rgba8}x{rgba8}", hostile.deep_png(rgba8, 8), "image/png"),
        (f"8-bit RGBA PNG {int(rgba8 / 1.25 ** 0.5)}^2, interlaced", hostile.deep_png(int(rgba8 / 1.25 ** 0.5), 8,
                                                                                        interlaced=True), "image/png"),
        (f"8-bit RGB PNG {side}x{side}", hostile.deep_png(side, 8, 2), "image/png"),
        (f"16-bit RGBA PNG {rgba16}x{rgba16}", hostile.deep_png(rgba16), "image/png"),
        (f"progressive colour JPEG {side}x{side}, 64 scans",
         hostile.progressive_jpeg_repeated_scans(side, 54, "RGB"), "image/jpeg"),
        (f"baseline colour JPEG {side}x{side}", encode(Image.new("RGB", (side, side), "red"), "JPEG"), "image/jpeg"),
        (f"GIF {side}x{side}", encode(Image.new("P", (side, side)), "GIF"), "image/gif"),
        (f"TIFF LZW RGB {side}x{side}", encode(Image.new("RGB", (side, side)), "TIFF", compression="tiff_lzw"),
         "image/tiff"),
        (f"WebP lossless {min(16383, side * side // 2420)}x2420",
         encode(Image.new("RGB", (min(16383, side * side // 2420), 2420)), "WEBP", lossless=True), "image/webp"),
        (f"run-length BMP {side // 5}x{side // 5} (counts 25 times)", hostile.rle_bmp(side // 5), "image/bmp"),
        ("BMP 1400x1400 (5.9 MB: near the payload limit)", encode(Image.new("RGB", (1400, 1400)), "BMP"), "image/bmp"),
        ("TIFF 8x8 with 131,080 numbers in its tags", hostile.amplified_exif("tiff", 16, 65_000, value_type=5),
         "image/tiff"),
        ("JPEG 8x8 whose EXIF tags ask 4.5 GB (kept from Pillow)", hostile.amplified_exif("jpeg"), "image/jpeg"),
        ("JPEG 64x64 whose MPF index is 800,000 rationals (kept from Pillow)", hostile.jpeg_with_mpf(), "image/jpeg"),
        ("TIFF 8x8 with 990 tags", hostile.tiff_with_many_tags(990), "image/tiff"),
        ("refused: progressive JPEG, 400,000 scans", hostile.progressive_jpeg_repeated_scans(), "image/jpeg"),

        ("refused: TIFF whose Exif directory asks 4.5 GB", hostile.amplified_exif("tiff"), "image/tiff"),
        ("refused: run-length BMP 6000x6000 in 24 KB", hostile.rle_bmp(), "image/bmp"),
        ("refused: JPEG with 6 MB of fill bytes", hostile.jpeg_with_fill_bytes(), "image/jpeg"),
        ("refused: TIFF with 4,000 tags", hostile.tiff_with_many_tags(), "image/tiff"),
        ("refused: GIF with a 4.4 MB comment", hostile.gif_with_huge_comment(), "image/gif"),
        ("refused: ICO holding a 60000x60000 PNG", hostile.ico_with_huge_png(), "image/x-icon"),
        ("refused: PNG with 1,000 ICC profiles inflating to 1 GB", hostile.png_with_icc_chunks(), "image/png"),
    ]


def measure(body: bytes, content_type: str, model, repeats: int) -> tuple[int, float]:
    times, status = [], 200
    for _ in range(repeats):
        started = time.perf_counter()
        try:
            inference.input_fn(body, content_type, model=model)
        except GenericInferenceToolkitError as e:
            status = e.status_code
        times.append(time.perf_counter() - started)
    return status, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6300, help="square side at the pixel limits (6300: 39.7 Mpx)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--name", default="decode_cost")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a worker runs
    model = types.SimpleNamespace(classes=["a"], preprocessing=PRE, transform=eval_transform(PRE))
    photo = sorted((args.data / "test").rglob("*.JPEG"))[0].read_bytes()
    rows = []
    for what, body, content_type in cases(args.side, photo):
        status, seconds = measure(body, content_type, model, args.repeats)
        rows.append({"case": what, "bytes": len(body), "status": status, "ms": seconds * 1e3})
        print(rows[-1], flush=True)
    for row in rows:
        row["vs_photo"] = row["ms"] / rows[0]["ms"]
    columns = {"case": "image", "bytes": "bytes", "status": "status", "ms": "median ms", "vs_photo": "x the photo"}
    write(args.name, rows, columns, f"input_fn on one thread, median of {args.repeats}; side {args.side}.",
          results=args.results)


if __name__ == "__main__":
    main()
