"""gallery.py: the report's worst mistakes as the network saw them, with their Grad-CAM overlays."""
import numpy as np
import torch
from PIL import Image

from image_classifier import models
from image_classifier.training import gallery
from image_classifier.preprocessing import Preprocessing, eval_crop, eval_transform

PRE = Preprocessing(32, 36, (0.5,) * 3, (0.5,) * 3, "bicubic")
CLASSES = ["A", "B", "C"]


def photo(path, size=(60, 45)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_the_crop_is_the_evaluations(tmp_path):
    """The gallery shows eval_crop's picture; eval_transform is that picture normalized."""
    image = Image.open(photo(tmp_path / "a.jpg")).convert("RGB")
    crop = eval_crop(PRE)(image)
    assert crop.size == (32, 32)
    expected = (torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1) - 0.5) / 0.5
    assert torch.allclose(eval_transform(PRE)(image), expected, atol=1e-6)


def test_each_mistake_gets_a_thumbnail_and_an_overlay(tmp_path):
    torch.manual_seed(0)
    net, _, _ = models.build("resnet18", "none", len(CLASSES))
    root = tmp_path / "test"
    photo(root / "001.A" / "a.jpg")
    photo(root / "002.B" / "b.jpg", size=(30, 80))
    mistakes = [{"file": "001.A/a.jpg", "label": "A", "predicted": "B"},
                {"file": "002.B/gone.jpg", "label": "B", "predicted": "C"},  # removed since it was evaluated
                {"file": "002.B/b.jpg", "label": "B", "predicted": "C"}]
    folder = tmp_path / "evaluation" / "test_mistakes"
    mistakes = gallery.write(net, torch.device("cpu"), PRE, root, mistakes, CLASSES, folder)
    assert mistakes[0]["thumbnail"] == "test_mistakes/00.jpg"
    assert mistakes[0]["overlay"] == "test_mistakes/00_gradcam.jpg"
    assert "thumbnail" not in mistakes[1]  # the row stays, without a picture
    assert mistakes[2]["overlay"] == "test_mistakes/02_gradcam.jpg"
    for name in ("00.jpg", "00_gradcam.jpg", "02.jpg", "02_gradcam.jpg"):
        with Image.open(folder / name) as tile:
            assert tile.size == (gallery.THUMBNAIL, gallery.THUMBNAIL)
    plain = np.asarray(Image.open(folder / "00.jpg"), dtype=np.int16)
    overlaid = np.asarray(Image.open(folder / "00_gradcam.jpg"), dtype=np.int16)
    assert (overlaid[..., 0] - plain[..., 0]).mean() > 5  # the overlay is redder where the model looked


def test_overlay_is_red_in_proportion_to_the_map():
    crop = Image.new("RGB", (4, 4), (0, 0, 0))
    heatmap = np.zeros((2, 2))
    heatmap[0, 0] = 1.0
    out = np.asarray(gallery.overlay(crop, heatmap))
    assert out[0, 0, 0] > 100 and out[3, 3].tolist() == [0, 0, 0]


def test_a_transformer_s_mistakes_are_shown_without_a_heat_map(tmp_path):
    """A ViT has tokens, no feature map for Grad-CAM: the crop alone, and the report says nothing false."""
    net = models.create({"timm": "vit_tiny_patch16_224", "kwargs": {"img_size": 32}}, len(CLASSES))
    root = tmp_path / "test"
    photo(root / "001.A" / "a.jpg")
    folder = tmp_path / "evaluation" / "test_mistakes"
    mistake = {"file": "001.A/a.jpg", "label": "A", "predicted": "B"}
    [shown] = gallery.write(net, torch.device("cpu"), PRE, root, [mistake], CLASSES, folder)
    assert shown["thumbnail"] == "test_mistakes/00.jpg" and "overlay" not in shown
    assert sorted(p.name for p in folder.iterdir()) == ["00.jpg"]
