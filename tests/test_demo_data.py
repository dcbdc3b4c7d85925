"""demo/demo.py's download path lays Imagewoof out as the shared data set is: a test split of
ImageNet-validation photos only (unseen by pretrained backbones), train and valid without any."""
import importlib.util

from conftest import IMAGEWOOF, ROOT


def demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_download_splits_keep_imagenet_validation_photos_for_test_only(tmp_path):
    d = demo()
    raw = tmp_path / "raw"
    for wnid in d.WNIDS:  # Imagewoof2's layout: both kinds of photo in val/, train photos in train/
        for split, names in (("train", [f"{wnid}_{i}.JPEG" for i in range(450)]),
                             ("val", [f"{wnid}_{i}.JPEG" for i in range(450, 550)]
                              + [f"ILSVRC2012_val_{wnid[-4:]}{i:04d}.JPEG" for i in range(50)])):
            (raw / split / wnid).mkdir(parents=True)
            for name in names:
                (raw / split / wnid / name).write_bytes(name.encode())
    d.split_imagewoof(raw, tmp_path / "out")
    for split, n in d.PER_CLASS.items():
        classes = sorted((tmp_path / "out" / split).iterdir())
        assert [c.name for c in classes][:2] == ["001.Shih-Tzu", "002.Rhodesian_ridgeback"] and len(classes) == 10
        for folder in classes:
            names = [f.name for f in folder.iterdir()]
            assert len(names) == n
            assert all(("ILSVRC2012_val_" in name) == (split == "test") for name in names), (split, names[:3])
            assert all(name.startswith(folder.name[4:] + "_") for name in names)  # breed_original-name
    train = {f.name for f in (tmp_path / "out" / "train").rglob("*.JPEG")}
    assert not train & {f.name for f in (tmp_path / "out" / "valid").rglob("*.JPEG")}  # no photo in both
    again = tmp_path / "again"
    d.split_imagewoof(raw, again)  # the same picks every time
    assert sorted(f.name for f in again.rglob("*.JPEG")) == sorted(f.name for f in (tmp_path / "out").rglob("*.JPEG"))


def test_the_shared_data_set_has_the_same_property(imagewoof):
    for split in ("train", "valid", "test"):
        names = [p.name for p in (IMAGEWOOF / split).rglob("*.JPEG")]
        assert names and all(("ILSVRC2012_val_" in n) == (split == "test") for n in names), split
