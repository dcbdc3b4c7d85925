import json

import pytest
import torch

from image_classifier import artifact, models
from image_classifier.preprocessing import Preprocessing

PRE = Preprocessing(64, 73, (0.5,) * 3, (0.5,) * 3, "bicubic")


def save_small(model_dir, backbone="resnet18"):
    model, built, source = models.build(backbone, "none", 3)
    artifact.save(model_dir, model, backbone, built.architecture, ["A", "B", "C"], ["001.A", "002.B", "003.C"], PRE,
                  {"epochs": 1}, {"valid_accuracy": 0.5}, source)
    return model


def test_save_and_load_round_trip(tmp_path):
    model = save_small(tmp_path)
    loaded, manifest = artifact.load(tmp_path)
    assert not loaded.training
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)  # bit for bit
    # Outputs agree only to rounding: the loaded model runs channels_last, whose
    # conv kernels sum in another order (exact equality failed on CI's CPU).
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    assert manifest["class_names"] == ["A", "B", "C"]
    assert manifest["preprocessing"]["interpolation"] == "bicubic"
    assert {"torch", "torchvision", "timm", "python"} <= set(manifest["versions"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]


def test_weights_are_a_plain_state_dict(tmp_path):
    save_small(tmp_path)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_weights_holding_pickled_objects_are_refused(tmp_path):
    save_small(tmp_path)
    torch.save({"fc.weight": object()}, tmp_path / "model.pt")
    with pytest.raises(artifact.ArtifactError, match="cannot be read as saved weights .*Weights only load failed"):
        artifact.load(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.json").unlink(), "no model.json"),
    (lambda d: (d / "model.json").write_text("{"), "not valid JSON"),
    (lambda d: (d / "model.json").write_text(json.dumps({"format_version": 99})), "format_version 99"),
    (lambda d: (d / "model.pt").unlink(), "no model.pt"),
    (lambda d: (d / "model.pt").write_bytes(b"truncated"), "model.pt cannot be read as saved weights"),
])
def test_damaged_artifacts_give_reasons(tmp_path, damage, message):
    save_small(tmp_path)
    damage(tmp_path)
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.load(tmp_path)


def test_the_manifest_names_the_architecture_serving_builds(tmp_path):
    save_small(tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    assert manifest["architecture"] == {"timm": "resnet18.tv_in1k", "kwargs": {}}
    del manifest["architecture"]  # a model.json from before it was recorded: its backbone's alias
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    assert artifact.load(tmp_path)[0].fc.out_features == 3
    manifest["architecture"] = {"timm": "resnet_from_the_future", "kwargs": {}}
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(artifact.ArtifactError, match="names an architecture this image cannot build"):
        artifact.load(tmp_path)


def test_weights_of_another_shape_are_reported(tmp_path):
    save_small(tmp_path)
    other, _, _ = models.build("resnet18", "none", 5)
    torch.save(other.state_dict(), tmp_path / "model.pt")
    with pytest.raises(artifact.ArtifactError, match="does not match the manifest"):
        artifact.load(tmp_path)
