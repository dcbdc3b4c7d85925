"""Any timm backbone: names, heads, freeze policies, Grad-CAM's reach, and every weight source a
job without internet has (a timm local-dir folder, a .safetensors file, the Hugging Face Hub cache).

The weights are random timm models of families other than the bundled ones, saved here as timm
saves them: nothing is downloaded."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_classifier import gradcam, models
from image_classifier.errors import TrainingError
from image_classifier.training import channels, features
from image_classifier.vision import timm

CONTAINER = Path(__file__).resolve().parents[1] / "container"


def test_a_name_timm_does_not_know_says_so_and_suggests():
    with pytest.raises(TrainingError, match=r"unknown backbone 'convnext_atoo': timm has no model .*similar: conv"):
        models.build("convnext_atoo", "none", 3)
    with pytest.raises(TrainingError, match=r"no weights tagged 'nope' for convnext_atto \(d2_in1k"):
        models.build("convnext_atto.nope", "none", 3)
    assert models.timm_name("convnext_atto") == "convnext_atto.d2_in1k"  # the arch's default weights


def test_a_model_with_two_heads_is_refused_with_its_reason():
    with pytest.raises(TrainingError, match="2 classifier heads .*distilled"):
        models.build("deit_tiny_distilled_patch16_224", "none", 3)


@pytest.mark.parametrize("name, head, last_stage, size", [
    ("convnext_atto", "head.fc", "stages.3", 64),  # head inside a head module, LayerNorm before it
    ("vit_tiny_patch16_224", "head", "blocks.11", 64),  # a transformer at another input size
    ("dla34", "fc", "level5", 64),  # a 1x1 convolution as its classifier
])
def test_every_family_gets_a_new_head_freeze_policies_and_cached_features_that_match(name, head, last_stage, size):
    model, backbone, _ = models.build(name, "none", 5, image_size=size)
    assert (backbone.head, backbone.last_stage) == (head, last_stage)
    assert backbone.preprocessing().image_size == size
    x = torch.randn(2, 3, size, size)
    assert model.eval()(x).shape == (2, 5)

    names = [n for n, _ in model.named_parameters()]
    assert models.freeze(model, backbone, "head") == sum(p.numel() for p in model.get_submodule(head).parameters())
    n = models.freeze(model, backbone, "last-stage")
    trained = [k for k, p in model.named_parameters() if p.requires_grad]
    assert trained == names[names.index(next(k for k in names if k.startswith(last_stage + "."))):]
    assert trained[-1].startswith(head + ".") and n < sum(p.numel() for p in model.parameters())

    # Head-only training on cached features computes what the whole network computes.
    with torch.no_grad():
        cached = models.pre_logits(model, x)
        assert cached.shape == (2, models.classifier_width(model, head))
        net = features.Head(model, head)
        torch.testing.assert_close(net(cached), model(x))
    assert [k for k, _ in net.named_parameters()] == [k for k in names if k.startswith(head + ".")]


def test_gradcam_explains_a_cnn_and_refuses_a_transformer_with_a_reason():
    convnext = models.build_for_inference("convnext_atto", 3).eval()
    layer = gradcam.last_spatial_layer(convnext, 64)
    found = gradcam.explain(convnext, layer, torch.randn(3, 64, 64))
    assert found.heatmap.shape == (64, 64)
    vit = models.create({"timm": "vit_tiny_patch16_224", "kwargs": {"img_size": 64}}, 3).eval()
    with pytest.raises(gradcam.Unsupported, match=r"convolutional feature map; VisionTransformer gives tokens"):
        gradcam.last_spatial_layer(vit, 64)


def _random_imagenet(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, **kwargs)
    for p in model.parameters():  # unlike a fresh model's: a load that skipped a tensor shows
        p.data.uniform_(-0.1, 0.1)
    return model


def test_a_timm_local_dir_in_the_pretrained_channel_loads_strictly_at_another_image_size(tmp_path):
    vit = _random_imagenet("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    folder = tmp_path / "pretrained" / "vit"
    timm.models.save_for_hf(vit, folder, safe_serialization=True)  # config.json + model.safetensors
    found = channels.pretrained({"pretrained": tmp_path / "pretrained"}, "vit_tiny_patch16_224")
    assert found == folder

    model, backbone, source = models.build("vit_tiny_patch16_224", "imagenet", 4, found, image_size=64)
    assert "timm local-dir" in source and backbone.kwargs == {"img_size": 64}
    assert torch.equal(model.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert model.pos_embed.shape == (1, 1 + 4 * 4, 192)  # timm's filter resampled the 14x14 grid to 4x4
    assert model.head.out_features == 4

    with pytest.raises(TrainingError, match="config.json is for 'vit_tiny_patch16_224', not the backbone's 'convnext"):
        models.build("convnext_atto", "imagenet", 4, found)
    config = json.loads((folder / "config.json").read_text())
    (folder / "model.safetensors").unlink()
    with pytest.raises(TrainingError, match="no weights file .* and no timm local-dir folder"):
        channels.pretrained({"pretrained": tmp_path / "pretrained"}, "vit_tiny_patch16_224")
    assert config["architecture"] == "vit_tiny_patch16_224"


def test_a_headless_safetensors_file_loads_and_a_short_one_is_refused_by_name(tmp_path):
    from safetensors.torch import save_file
    source = _random_imagenet("convnext_atto")
    state = {k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith("head.fc.")}
    save_file(state, tmp_path / "convnext_atto.safetensors")
    model, _, where = models.build("convnext_atto", "imagenet", 3, tmp_path / "convnext_atto.safetensors")
    assert "convnext_atto.safetensors" in where and torch.equal(model.stages[3].blocks[0].conv_dw.weight,
                                                                source.stages[3].blocks[0].conv_dw.weight)
    del state["stages.3.blocks.1.mlp.fc2.weight"]
    save_file(state, tmp_path / "convnext_atto.safetensors")
    with pytest.raises(TrainingError, match=r"do not fit convnext_atto.d2_in1k \(missing: stages.3.blocks.1.mlp.fc2"):
        models.build("convnext_atto", "imagenet", 3, tmp_path / "convnext_atto.safetensors")


HUB_SCRIPT = """
import sys, torch
from image_classifier import models
from image_classifier.errors import TrainingError
try:
    model, backbone, source = models.build(sys.argv[1], "imagenet", 3)
except TrainingError as e:
    print("REFUSED", e)
else:
    print("LOADED", source, float(model.stages[0].blocks[0].conv_dw.weight.abs().sum()))
"""


def _hub_cache(root: Path, model: torch.nn.Module, repo: str) -> None:
    """The Hugging Face Hub cache's layout for one repo, as huggingface_hub writes it."""
    commit = "0" * 40
    base = root / f"models--{repo.replace('/', '--')}"
    timm.models.save_for_hf(model, base / "snapshots" / commit, safe_serialization=True)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)


def test_the_hub_cache_serves_a_job_in_offline_mode_and_an_empty_one_says_what_to_do(tmp_path):
    source = _random_imagenet("convnext_atto.d2_in1k")
    _hub_cache(tmp_path / "hub", source, "timm/convnext_atto.d2_in1k")
    # huggingface_hub reads HF_HUB_OFFLINE and its cache folder when imported: a process of its own.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(CONTAINER)}
    run = subprocess.run([sys.executable, "-c", HUB_SCRIPT, "convnext_atto"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "LOADED convnext_atto.d2_in1k weights from the Hugging Face Hub (timm/convnext_atto.d2_in1k)" in run.stdout
    weight = source.stages[0].blocks[0].conv_dw.weight.detach()
    assert float(run.stdout.split()[-1]) == pytest.approx(float(weight.abs().sum()))

    run = subprocess.run([sys.executable, "-c", HUB_SCRIPT, "convnext_femto"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert "REFUSED could not get the ImageNet weights of convnext_femto.d1_in1k" in run.stdout, run.stderr
    assert "HF_HUB_OFFLINE is set and they are not in the Hub cache" in run.stdout
    assert "stage them into a 'pretrained' channel" in run.stdout
