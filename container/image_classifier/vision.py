"""torchvision and timm, imported so that they work with a torch build that does not match
torchvision's C extension (the CPU torch wheel beside the registry's CUDA torchvision).

timm is imported on first use (`vision.timm`): every backbone is built by it, but `train --help`,
the launch side's settings and the serving front need none, and its import costs 0.7 s.

torchvision's meta registrations need the schemas of two C++ ops at import time. Load the
extension if it matches; otherwise declare just those schemas. Models, transforms and
ImageFolder work either way; torchvision.io decoders and ops.nms do not, so images are
decoded with Pillow. Where the extension loads (matching builds) this changes nothing.
"""
from __future__ import annotations

import glob
import importlib.util
import os

import torch

_LIBRARY = None  # keeps the fallback op library alive


def _register_ops() -> None:
    global _LIBRARY
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    for so in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
        try:
            torch.ops.load_library(so)
            return
        except (OSError, RuntimeError):
            break
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY = lib
    except RuntimeError:  # already defined in this process
        pass


_register_ops()

import torchvision  # noqa: E402
from torchvision import transforms  # noqa: E402

__all__ = ["torchvision", "transforms"]  # and timm, on first use


def __getattr__(name: str):
    if name == "timm":
        import timm
        return timm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
