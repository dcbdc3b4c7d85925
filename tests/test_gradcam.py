"""Grad-CAM's pieces: the layer it explains, the box, and where the eval crop lies in the input."""
import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier import gradcam, models
from image_classifier.preprocessing import Preprocessing, eval_transform
from image_classifier.serving.explanations import crop_region


def test_the_explained_layer_is_the_last_feature_map_with_positions():
    resnet = models.build_for_inference("resnet18", 3).eval()
    assert gradcam.last_spatial_layer(resnet, 64) is resnet.layer4  # not avgpool's (N, C, 1, 1)
    lite = models.build_for_inference("efficientnet_lite0", 3).eval()
    layer = gradcam.last_spatial_layer(lite, 224)
    shapes = []
    layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)) and None)
    lite(torch.zeros(1, 3, 224, 224))
    assert shapes[0][2:] == (7, 7)  # the backbone's last 7x7 map, before pooling


def test_explain_gives_a_normalised_map_the_size_of_the_input_for_the_asked_class():
    torch.manual_seed(0)
    net = models.build_for_inference("resnet18", 3).eval()
    image = torch.randn(3, 64, 64)
    found = gradcam.explain(net, net.layer4, image)
    assert found.heatmap.shape == (64, 64) and 0 <= found.heatmap.min() and found.heatmap.max() == pytest.approx(1)
    assert found.class_index == int(net(image[None]).argmax())
    other = gradcam.explain(net, net.layer4, image, class_index=(found.class_index + 1) % 3)
    assert other.class_index == (found.class_index + 1) % 3 and not np.allclose(other.heatmap, found.heatmap)
    assert all(p.grad is None for p in net.parameters())  # nothing accumulates in the served weights


def test_the_box_is_around_the_largest_region_over_the_threshold():
    heat = np.zeros((50, 80))
    heat[5:10, 5:10] = 1.0  # small and hottest
    heat[20:40, 30:70] = 0.5  # large, over 15% of the maximum
    assert gradcam.box(heat) == (30, 20, 70, 40)
    assert gradcam.box(np.zeros((4, 6))) == (0, 0, 6, 4)


@pytest.mark.parametrize("size", [(320, 480), (500, 333), (256, 256), (1000, 300)])
def test_crop_region_is_where_the_eval_transform_crops(size):
    pre = Preprocessing(224, 256, (0, 0, 0), (1, 1, 1), "bilinear")
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    image = Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8))  # smooth gradients
    seen = eval_transform(pre)(image)
    left, top, right, bottom = crop_region(w, h, pre)
    cropped = image.resize((224, 224), Image.BILINEAR, box=(left, top, right, bottom))
    expected = torch.from_numpy(np.array(cropped)).permute(2, 0, 1).float() / 255
    assert (seen - expected).abs().mean() < 0.01  # the same region: only resampling differs
