"""Cached backbone features (trainable=head): the same numbers as the full model, views fixed per
image, a disk cache keyed by what the features depend on, and undecodable images skipped."""
import argparse
import os
import shutil

import pytest
import torch

from image_classifier import image_folder, models
from image_classifier.training import data, features
from image_classifier.preprocessing import eval_transform, train_transform

pytestmark = pytest.mark.slow  # real backbones


def hp(**kw):
    return {"seed": 42, "batch_size": 4, "num_workers": 0, **kw}


@pytest.fixture
def setup(tiny_data, tmp_path):
    valid = shutil.copytree(tiny_data["valid"], tmp_path / "valid")  # the tests change files
    torch.manual_seed(0)
    model, backbone, _ = models.build("efficientnet_lite0", "imagenet", 3)
    models.freeze(model, backbone, "head")
    models.to_device(model, torch.device("cpu"))
    return model, backbone, models.preprocessing(backbone.cfg, 64), image_folder.scan("valid", valid)


def cache(model, backbone, pre, directory="", **kw):
    return features.FeatureCache(directory, model, backbone.head, pre, None, torch.device("cpu"), **hp(**kw))


def test_the_head_on_cached_features_gives_the_full_models_logits(setup):
    model, backbone, pre, channel = setup
    found = cache(model, backbone, pre).eval_view(channel)
    assert found.ok.all() and found.features.shape == (12, 1280)
    assert found.labels.tolist() == [label for _, label in channel.samples]
    images = torch.stack([eval_transform(pre)(data.to_rgb(data.Image.open(p), pre.resize_size))
                          for p, _ in channel.samples])
    model.eval()
    with torch.no_grad():
        full = model(models.batch_to(images, torch.device("cpu")))
        head = features.Head(model, backbone.head)(found.features)
    torch.testing.assert_close(head, full, rtol=1e-4, atol=1e-4)
    assert isinstance(model.classifier, torch.nn.Linear)  # the head is put back after extraction


def test_augmented_views_are_fixed_per_image_whatever_the_batch_size(setup):
    model, backbone, pre, channel = setup
    view = cache(model, backbone, pre, batch_size=4).train_view(channel, 0, train_transform(pre))
    again = cache(model, backbone, pre, batch_size=5).train_view(channel, 0, train_transform(pre))
    other = cache(model, backbone, pre).train_view(channel, 1, train_transform(pre))
    torch.testing.assert_close(view.features, again.features, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(view.features, other.features)  # another view is another crop
    reseeded = cache(model, backbone, pre, seed=7).train_view(channel, 0, train_transform(pre))
    assert not torch.allclose(view.features, reseeded.features)


def test_an_augmentation_recipe_is_its_own_cached_view(setup, tmp_path):
    from image_classifier.preprocessing import Augmentation
    model, backbone, pre, channel = setup
    folder = tmp_path / "cache"
    plain = cache(model, backbone, pre, folder).train_view(channel, 0, train_transform(pre))
    aug = Augmentation("trivialaugment", 0.25)
    augmented = cache(model, backbone, pre, folder).train_view(channel, 0, train_transform(pre, aug), aug=aug)
    assert len(list(folder.glob("*.pt"))) == 2 and not torch.allclose(plain.features, augmented.features)
    again = cache(model, backbone, pre, folder).train_view(channel, 0, train_transform(pre, aug), aug=aug)
    assert torch.equal(again.features, augmented.features) and len(list(folder.glob("*.pt"))) == 2


def test_disk_cache_is_reused_and_keyed_by_weights_and_files(setup, tmp_path, monkeypatch):
    model, backbone, pre, channel = setup
    first = cache(model, backbone, pre, tmp_path / "cache").eval_view(channel)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_backbone(*a, **k):
        raise AssertionError("features should have come from the cache folder")

    real_extract = features.FeatureCache._extract
    monkeypatch.setattr(features.FeatureCache, "_extract", no_backbone)
    again = cache(model, backbone, pre, tmp_path / "cache").eval_view(channel)
    assert torch.equal(first.features, again.features) and torch.equal(first.ok, again.ok)

    monkeypatch.setattr(features.FeatureCache, "_extract", real_extract)
    path = channel.samples[0][0]
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # a changed file
    cache(model, backbone, pre, tmp_path / "cache").eval_view(channel)
    with torch.no_grad():
        model.conv_stem.weight.mul_(0.5)  # other backbone weights
    cache(model, backbone, pre, tmp_path / "cache").eval_view(channel)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3


def test_a_damaged_cache_file_is_recomputed(setup, tmp_path, caplog):
    model, backbone, pre, channel = setup
    first = cache(model, backbone, pre, tmp_path / "cache").eval_view(channel)
    [path] = (tmp_path / "cache").glob("*.pt")
    path.write_bytes(b"truncated")
    again = cache(model, backbone, pre, tmp_path / "cache").eval_view(channel)
    assert "ignoring unreadable feature cache file" in caplog.text
    torch.testing.assert_close(first.features, again.features)


def test_undecodable_images_are_marked_and_batches_count_them(setup):
    model, backbone, pre, channel = setup
    broken = channel.samples[1][0]
    with open(broken, "r+b") as f:  # passes the header check, fails to decode
        f.truncate(400)
    found = cache(model, backbone, pre).eval_view(channel)
    assert found.ok.tolist() == [i != 1 for i in range(12)]
    threads = torch.get_num_threads()
    steps = list(features.batches(found, list(range(12)), 5, drop_last=True))
    assert torch.get_num_threads() == threads  # one thread while the head trains, then as before
    assert [(len(f), n) for f, _, n in steps] == [(4, 1), (5, 0)]  # 12 images, batch 5: last 2 dropped
    steps = list(features.batches(found, list(range(12)), 5, drop_last=False))
    assert [len(f) for f, _, _ in steps] == [4, 5, 2]


def test_interrupted_by_sigterm(setup):
    model, backbone, pre, channel = setup
    with pytest.raises(features.Interrupted):
        cache(model, backbone, pre).eval_view(channel, stop=argparse.Namespace(requested=True))
