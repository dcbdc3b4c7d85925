"""Request limits, each overridable with an environment variable on the endpoint."""
import os

MIB = 1024 * 1024


def max_payload_bytes() -> int:
    # Real-time endpoints get at most 6 MB; batch transform sets SAGEMAKER_MAX_PAYLOAD_IN_MB
    # from MaxPayloadInMB (up to 100). `serve` resolves this once and passes it to the workers.
    if "MAX_PAYLOAD_BYTES" in os.environ:
        return int(os.environ["MAX_PAYLOAD_BYTES"])
    return int(os.environ.get("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6)) * MIB


def payload_too_large(size: int | None = None) -> str:
    """The 413 message for a body over the limit (size unknown for a chunked body not read to its end)."""
    limit = max_payload_bytes()
    return (f"body is {size} bytes" if size is not None else f"body is over {limit} bytes") + \
        f"; the limit is {limit} (MAX_PAYLOAD_BYTES)"


def max_pixels() -> int:
    return int(os.environ.get("MAX_IMAGE_PIXELS", 40_000_000))  # decompression-bomb guard


def max_request_pixels() -> int:
    """Pixels one request may decode in all, counted before any is decoded (a JPEG's at the scale its
    decoder will use): a batch of images each under MAX_IMAGE_PIXELS cannot hold a worker for long.
    40 Mpx is about 0.35 s of decoding for the costliest kind seen (1-bit PNG)."""
    return int(os.environ.get("MAX_REQUEST_PIXELS", 40_000_000))


def max_decode_seconds() -> float:
    """Decoding time one request may use, checked between its images."""
    return float(os.environ.get("MAX_DECODE_SECONDS", 5))


def max_batch_images() -> int:
    return int(os.environ.get("MAX_BATCH_IMAGES", 64))
