"""training/channels.py: which file of the 'pretrained' channel is the backbone's weights."""
import pytest

from image_classifier.errors import TrainingError
from image_classifier.training import channels


def test_the_pretrained_channel_takes_one_weights_file_or_the_one_named_after_the_backbone(tmp_path):
    folder = tmp_path / "pretrained"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.txt").write_text("not weights")
    (folder / "sub" / "model.safetensors").write_bytes(b"x")
    assert channels.pretrained({"pretrained": folder}, "resnet50") == folder / "sub" / "model.safetensors"
    (folder / "resnet50.pt").write_bytes(b"x")
    assert channels.pretrained({"pretrained": folder}, "resnet50") == folder / "resnet50.pt"
    with pytest.raises(TrainingError, match="has 2 weights files; name one efficientnet_lite0.safetensors"):
        channels.pretrained({"pretrained": folder}, "efficientnet_lite0")
    assert channels.pretrained({}, "resnet50") is None


def test_a_pretrained_channel_without_weights_says_which_files_count(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TrainingError, match=r"no weights file \(.safetensors, .pt, .pth, .bin\) and no timm "
                                            r"local-dir folder \(config.json "):
        channels.pretrained({"pretrained": tmp_path}, "resnet50")
