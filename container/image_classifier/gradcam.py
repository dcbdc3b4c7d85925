"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, arXiv:1610.02391): where the network looked for a class.

The class score's gradient with respect to the last spatial feature map, averaged over its
positions, weighs that map's channels; the ReLU of the weighted sum is the heat map. Its box is
the paper's localization: binarize at 15% of the map's maximum and take the bounding box of the
largest connected region. Runs the fp32 eager network (a frozen graph has no gradients).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage
from torch import nn

BOX_THRESHOLD = 0.15  # of the map's maximum, as in the paper's ILSVRC localization


class Unsupported(ValueError):
    """The network has no spatial feature map to explain (a transformer's tokens)."""


def last_spatial_layer(network: nn.Module, image_size: int) -> nn.Module:
    """The module whose output is the network's last feature map with positions (N, C, H, W, H and
    W > 1): found by running it once, for any backbone. A timm network must give such a map from
    forward_features: a transformer's tokens (N, L, C) or an (N, H, W, C) map are refused."""
    finished, head = [], []
    hooks = [m.register_forward_hook(lambda m, i, o: finished.append(m) if isinstance(o, torch.Tensor)
                                     and o.dim() == 4 and min(o.shape[2:]) > 1 else None)
             for m in network.modules() if m is not network]
    zeros = torch.zeros(1, 3, image_size, image_size, device=next(network.parameters()).device)
    try:
        with torch.no_grad():
            if hasattr(network, "forward_features"):
                head.append(network.forward_features(zeros))
            else:
                network(zeros)
    finally:
        for hook in hooks:
            hook.remove()
    layout = getattr(network, "output_fmt", "NCHW")
    layout = getattr(layout, "value", layout)  # timm's Format enum
    if head and (head[0].dim() != 4 or str(layout) != "NCHW"):
        raise Unsupported(f"Grad-CAM needs a convolutional feature map; {type(network).__name__} gives "
                          f"{'tokens' if head[0].dim() == 3 else str(layout) + ' features'} "
                          f"{tuple(head[0].shape)}")
    if not finished:
        raise Unsupported("the network has no spatial feature map to explain")
    return finished[-1]


@dataclasses.dataclass
class Explanation:
    heatmap: np.ndarray  # (H, W) in [0, 1], at the input tensor's resolution
    class_index: int
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive), at the input tensor's resolution


def explain(network: nn.Module, layer: nn.Module, image: torch.Tensor, class_index: int | None = None) -> Explanation:
    """image: one normalized (3, H, W) tensor; class_index: None for the predicted class."""
    captured = {}
    hook = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("maps", o))
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = image.unsqueeze(0).clone().requires_grad_(True)  # a graph even where the weights are frozen
            logits = network(x).float()
            index = int(logits.argmax(1)) if class_index is None else class_index
            maps = captured["maps"]
            grads, = torch.autograd.grad(logits[0, index], maps)
    finally:
        hook.remove()
    weights = grads.float().mean((2, 3), keepdim=True)
    cam = torch.relu((weights * maps.detach().float()).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    heatmap = (cam / peak if peak > 0 else cam).cpu().numpy()  # the network may be on a GPU
    return Explanation(heatmap, index, box(heatmap))


def box(heatmap: np.ndarray, threshold: float = BOX_THRESHOLD) -> tuple[int, int, int, int]:
    """The bounding box of the largest connected region at or above threshold x the maximum."""
    regions, count = ndimage.label(heatmap >= threshold * heatmap.max() if heatmap.max() > 0 else heatmap > 0)
    if count == 0:
        return 0, 0, heatmap.shape[1], heatmap.shape[0]
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(heatmap), regions, range(1, count + 1))))
    rows, cols = np.nonzero(regions == largest)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
