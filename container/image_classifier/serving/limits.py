"""Request limits, each overridable with an environment variable on the endpoint."""
import os


def max_payload_bytes() -> int:
    # SageMaker's real-time invocation limit is 6 MB; batch transform may send up to 100 MB.
    return int(os.environ.get("MAX_PAYLOAD_BYTES", 6 * 1024 * 1024))


def max_pixels() -> int:
    return int(os.environ.get("MAX_IMAGE_PIXELS", 40_000_000))  # decompression-bomb guard


def max_batch_images() -> int:
    return int(os.environ.get("MAX_BATCH_IMAGES", 64))
