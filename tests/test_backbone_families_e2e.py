"""train -> serve -> predict -> Grad-CAM for two families beside the ResNets and EfficientNets: a
ConvNeXt (a CNN whose head sits inside a head module, behind a LayerNorm) and a ViT (a transformer,
at another input size than its weights'), with their weights staged in the 'pretrained' channel as
timm's local-dir folder: what a network-isolated job has."""
import base64
import io
import json

import pytest
import requests
import torch
from PIL import Image

from conftest import Server, failure_reason, run_train
from launch.local import programs
from image_classifier.vision import timm

pytestmark = pytest.mark.slow


def staged(folder, name):
    """A timm local-dir folder of random ImageNet-shaped weights (no download)."""
    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model(name, pretrained=False), folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("name, recipe, gradcam", [
    ("convnext_atto.d2_in1k", {"trainable": "head", "augment": "trivialaugment"}, True),  # cached, augmented views
    ("vit_tiny_patch16_224.augreg_in21k_ft_in1k",  # img_size 64: position embedding resampled
     {"trainable": "last-stage", "augment": "randaugment", "random-erasing": 0.25, "layer-decay": 0.75}, False),
])
def test_a_timm_backbone_trains_from_staged_weights_serves_and_explains_or_refuses(
        tmp_path, tiny_data, name, recipe, gradcam):
    pretrained = staged(tmp_path / "pretrained" / "weights", name)
    base = programs.make_tree(tmp_path / "job", {**tiny_data, "pretrained": pretrained.parent}, {
        "backbone": name, "epochs": 2, "batch-size": 8, "image-size": 64, "num-workers": 0, "lr": 0.01, **recipe})
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr + failure_reason(base)
    assert "timm local-dir" in result.stdout + result.stderr
    manifest = json.loads((base / "model" / "model.json").read_text())
    assert manifest["backbone"] == name and manifest["architecture"]["timm"] == name
    assert manifest["architecture"]["kwargs"] == ({} if gradcam else {"img_size": 64})
    assert manifest["preprocessing"]["image_size"] == 64
    assert manifest["preprocessing"]["mean"] == list(timm.models.get_pretrained_cfg(name).mean)

    server = Server(base)
    try:
        server.wait_healthy()
        image = next(iter(sorted(tiny_data["test"].rglob("*.jpg")))).read_bytes()
        answer = requests.post(server.url + "/invocations", data=image, headers={"Content-Type": "image/jpeg"},
                               timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] in manifest["class_names"]
        explained = requests.post(server.url + "/invocations", data=image, timeout=60, headers={
            "Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "explain=gradcam"})
        if gradcam:
            assert explained.status_code == 200, explained.text
            [p] = explained.json()["predictions"]
            heatmap = Image.open(io.BytesIO(base64.b64decode(p["explanation"]["heatmap_png"])))
            assert heatmap.size == Image.open(io.BytesIO(image)).size
        else:
            assert explained.status_code == 400 and "Traceback" not in explained.text
            assert "explain=gradcam is not supported for vit_tiny" in explained.json()["message"]
            assert "tokens" in explained.json()["message"]
        assert requests.get(server.url + "/ping", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0, server.output()
