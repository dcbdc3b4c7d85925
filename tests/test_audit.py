"""The data audit finds duplicates planted across splits, in-process, in a real `train` job and with
`python -m launch.audit` on real photos; it warns and never fails the job."""
import csv
import io
import shutil

import pytest
import torch
from PIL import Image

from conftest import CLASSES, FAST_HP, IMAGEWOOF, read_json, run_train
from image_classifier import image_folder
from image_classifier.training import audit
from launch.local import programs
from imagegen import make_splits
from launch_helpers import launch


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def plant(splits: dict, small: bool = True) -> dict:
    """An exact copy of a train image in test, and (on request) a 40x40 image in valid."""
    first = sorted((splits["train"] / CLASSES[0]).iterdir())[0]
    shutil.copy(first, splits["test"] / CLASSES[0] / "copy_of_train.jpg")
    if small:
        Image.new("RGB", (40, 40), "red").save(splits["valid"] / CLASSES[0] / "tiny.jpg")
    return {"exact": ("train", f"{CLASSES[0]}/{first.name}", "test", f"{CLASSES[0]}/copy_of_train.jpg")}


def test_checks_on_planted_problems(tmp_path):
    splits = make_splits(tmp_path, CLASSES, {"train": 12, "valid": 3, "test": 3})
    planted = plant(splits)
    for extra in sorted((splits["train"] / CLASSES[2]).iterdir())[:9]:
        extra.unlink()  # 3 left: few images, and 12 against 3 is not yet 10x
    channels = [image_folder.scan(n, splits[n]) for n in ("train", "valid", "test")]
    # Features: every image its own direction but two made alike (a near-duplicate pair across splits).
    views = [torch.nn.functional.one_hot(torch.arange(len(ch.samples)) + offset, 64).float()
             for offset, ch in zip((0, 30, 45), channels)]
    views[1][0] = views[0][1] * 0.95 + 0.2 * views[1][0]  # valid[0] looks like train[1]: cosine 0.979
    found, rows = audit.run(channels, 64, views)
    kinds = {r[0] for r in rows}
    assert planted["exact"] in [r[1:5] for r in rows if r[0] == "exact_duplicate"]
    [near] = [r for r in rows if r[0] == "near_duplicate"]
    assert near[1] == "train" and near[3] == "valid" and near[5] == "cosine 0.979"
    assert ("too_small", "valid", f"{CLASSES[0]}/tiny.jpg") in [r[:3] for r in rows]
    assert [r[2] for r in rows if r[0] == "few_images"] == [CLASSES[2]] and "imbalance" not in kinds
    assert found == {"exact_duplicates": 1, "near_duplicates": 1, "duplicate_pairs_by_splits": {"train-test": 1,
                     "train-valid": 1}, "few_image_classes": 1, "imbalanced": False, "too_small_images": 1}
    audit.write(tmp_path / "audit.tsv", rows)
    assert rows_of(tmp_path / "audit.tsv")[0].keys() == set(audit.COLUMNS)


def test_three_copies_are_exact_duplicates_only(tmp_path):
    """Files of the same bytes are never reported again as near-duplicates, whichever pair."""
    splits = make_splits(tmp_path, CLASSES, {"train": 3, "test": 3})
    first = sorted((splits["train"] / CLASSES[0]).iterdir())[0]
    for copy in ("copy_a.jpg", "copy_b.jpg"):
        shutil.copy(first, splits["test"] / CLASSES[0] / copy)
    channels = [image_folder.scan(n, splits[n]) for n in ("train", "test")]
    # Every image its own direction, but the three copies one, as a backbone makes them.
    views = [torch.eye(32)[offset: offset + len(ch.samples)].clone() for offset, ch in zip((0, 12), channels)]
    copied = channels[0].facts[str(first)].digest
    for ch, view in zip(channels, views):
        for row, (path, _) in enumerate(ch.samples):
            if ch.facts[path].digest == copied:
                view[row] = torch.eye(32)[31]
    found, rows = audit.run(channels, 8, views)
    assert found["exact_duplicates"] == 2 and found["near_duplicates"] == 0, rows


def test_extreme_imbalance_is_flagged(tmp_path):
    splits = make_splits(tmp_path, CLASSES[:2], {"train": 20})
    for extra in sorted((splits["train"] / CLASSES[1]).iterdir())[:18]:
        extra.unlink()
    rows = audit.class_checks(image_folder.scan("train", splits["train"]))
    assert ("imbalance", "train", CLASSES[0], "train", CLASSES[1], "20 against 2 training images (10x)") in rows


@pytest.mark.slow
def test_a_training_job_audits_its_data_and_still_trains(tmp_path, tiny_data):
    splits = {name: tmp_path / "data" / name for name in tiny_data}
    for name, path in tiny_data.items():
        shutil.copytree(path, splits[name])
    planted = plant(splits, small=False)
    base = programs.make_tree(tmp_path / "ml", splits, {**FAST_HP, "image-size": 64})
    result = run_train(base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data audit: 1 exact and" in result.stdout + result.stderr
    found = read_json(base / "output" / "data" / "metrics.json")["audit"]
    # Generated shapes on dark grounds are near-duplicates of each other to a real backbone: some
    # pairs are expected; that they were checked at all is what this asserts (cached features).
    assert found["exact_duplicates"] == 1 and found["near_duplicates"] is not None
    rows = rows_of(base / "output" / "data" / "audit.tsv")
    assert [tuple(r.values())[1:5] for r in rows if r["check"] == "exact_duplicate"] == [planted["exact"]]


@pytest.mark.slow
def test_launch_audit_finds_a_recompressed_copy_of_a_real_photo(tmp_path, imagewoof):
    """Real photos and EfficientNet-Lite0's ImageNet features: a copy of a test photo shrunk to 80%
    and saved again at JPEG quality 70 is found in train; distinct photos are not flagged."""
    root = tmp_path / "data"
    for split, n in (("train", 6), ("test", 6)):
        for folder in sorted((IMAGEWOOF / split).iterdir())[:3]:
            (root / split / folder.name).mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:n]:
                shutil.copy(photo, root / split / folder.name / photo.name)
    source = sorted((root / "test").rglob("*.JPEG"))[0]
    image = Image.open(source).convert("RGB")
    buf = io.BytesIO()
    image.resize((int(image.width * 0.8), int(image.height * 0.8))).save(buf, "JPEG", quality=70)
    (root / "train" / source.parent.name / "recompressed.jpg").write_bytes(buf.getvalue())
    result = launch("audit", str(root), "--out", str(tmp_path / "audit.tsv"), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data audit: 0 exact and 1 near-duplicate pair(s) (by splits: train-test 1)" in result.stdout
    [near] = [r for r in rows_of(tmp_path / "audit.tsv") if r["check"] == "near_duplicate"]
    assert near["file"].endswith("recompressed.jpg") and near["other_file"] == f"{source.parent.name}/{source.name}"
