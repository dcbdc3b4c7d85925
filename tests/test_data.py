import os

import pytest
import torch
from PIL import Image

from image_classifier import image_folder
from image_classifier.training import data
from image_classifier.errors import TrainingError
from imagegen import make_imagefolder


def test_class_names_drop_the_number_prefix():
    assert image_folder.class_name("001.Affenpinscher") == "Affenpinscher"
    assert image_folder.class_name("117.Leonberger") == "Leonberger"
    assert image_folder.class_name("cats") == "cats"
    assert image_folder.class_name("2019") == "2019"


def test_scan_reads_classes_and_skips_unreadable_files(tmp_path):
    root = make_imagefolder(tmp_path / "train", ["001.A", "002.B"], 3)
    (root / "001.A" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "002.B" / "notes.txt").write_text("hello")
    (root / "002.B" / ".DS_Store").write_bytes(b"\0")
    ch = image_folder.scan("train", root)
    assert ch.classes == ["A", "B"] and len(ch.samples) == 6
    assert sorted(p.rsplit("/", 1)[1] for p, _ in ch.skipped) == [".DS_Store", "broken.jpg", "notes.txt"]


def truncate(path):
    path.write_bytes(path.read_bytes()[:-100])  # a valid header: Image.verify() passes it


def test_every_file_is_a_sample_or_skipped_once_with_its_reason(tmp_path):
    root = make_imagefolder(tmp_path / "train", ["001.A", "002.B"], 2)
    a = root / "001.A"
    (a / ".hidden.jpg").write_bytes((a / "001.A_000.jpg").read_bytes())
    (a / ".cache").mkdir()
    (a / ".cache" / "copy.jpg").write_bytes((a / "001.A_000.jpg").read_bytes())
    (a / "gone.jpg").symlink_to(a / "nowhere.jpg")
    (a / "loop.jpg").symlink_to(a / "loop.jpg")
    (a / "parent").symlink_to(a)
    (a / "folder.jpg").mkdir()
    (a / "notes.txt").write_text("hello")
    (a / "truncated.jpg").write_bytes((a / "001.A_001.jpg").read_bytes())
    truncate(a / "truncated.jpg")
    os.mkfifo(a / "pipe.jpg")  # opening it would block
    (root / "stray.jpg").write_bytes((a / "001.A_000.jpg").read_bytes())
    (root / "002.B" / "more").symlink_to(tmp_path / "more")  # a linked folder is followed
    make_imagefolder(tmp_path / "more", ["x"], 1)
    ch = image_folder.scan("train", root)
    reasons = {os.path.relpath(p, root): r for p, r in ch.skipped}
    assert len(reasons) == len(ch.skipped)  # once each
    assert {k: v.split(":")[0] for k, v in reasons.items()} == {
        "001.A/.hidden.jpg": "hidden file", "001.A/.cache/copy.jpg": "in a hidden folder",
        "001.A/gone.jpg": "dangling symlink", "001.A/loop.jpg": "symlink loop", "001.A/parent": "symlink loop",
        "001.A/folder.jpg": "a folder, not an image file", "001.A/notes.txt": "not an image extension",
        "001.A/truncated.jpg": "cannot be decoded", "001.A/pipe.jpg": "not a regular file",
        "stray.jpg": "not in a class folder"}
    assert "truncated" in reasons["001.A/truncated.jpg"]
    assert sorted(os.path.relpath(p, root) for p, _ in ch.samples) == [
        "001.A/001.A_000.jpg", "001.A/001.A_001.jpg", "002.B/002.B_000.jpg", "002.B/002.B_001.jpg",
        "002.B/more/x/x_000.jpg"]


def test_class_whose_images_are_all_truncated_fails(tmp_path):
    root = make_imagefolder(tmp_path / "train", ["001.A", "002.B"], 2)
    for path in (root / "002.B").iterdir():
        truncate(path)
    with pytest.raises(TrainingError, match=r"channel 'train' has no readable images for class\(es\): B$"):
        image_folder.scan("train", root)


def test_class_left_without_images_fails(tmp_path):
    root = make_imagefolder(tmp_path / "train", ["001.A"], 2)
    (root / "002.B").mkdir()
    (root / "002.B" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="no readable images for class.*: B"):
        image_folder.scan("train", root)


def test_channel_without_images_says_what_it_found_and_why_each_kind_was_skipped(tmp_path):
    root = tmp_path / "train"
    for c in ("001.A", "002.B"):
        (root / c).mkdir(parents=True)
        for i in range(25):
            (root / c / f"{i:02d}.jpg").write_bytes(b"")
    for i in range(3):
        (root / "001.A" / f"notes{i}.txt").write_text("hello")
    with pytest.raises(TrainingError) as e:
        image_folder.scan("train", root)
    message = str(e.value)
    assert message.startswith("channel 'train' has no images: 53 file(s) found, all skipped: "
                              "50 empty file (0 bytes) (e.g. train/001.A/00.jpg)")
    assert "; 3 not an image extension (e.g. train/001.A/notes0.txt)" in message
    assert len(message.splitlines()) == 1


def test_channel_with_only_empty_class_folders_says_no_files_were_found(tmp_path):
    for c in ("001.A", "002.B"):
        (tmp_path / "train" / c).mkdir(parents=True)
    with pytest.raises(TrainingError) as e:
        image_folder.scan("train", tmp_path / "train")
    assert str(e.value) == "channel 'train' has no images: no files found under the class folders"


def test_skipped_summary_lists_four_kinds_then_counts_the_rest(tmp_path):
    root = make_imagefolder(tmp_path / "train", ["001.A"], 1)
    skipped = [(str(root / "001.A" / f"{i}"), f"kind {i % 6}") for i in range(12)] + [
        (str(root / "001.A" / "x"), "kind 0: detail")]
    summary = image_folder._summary(image_folder.Channel("train", root, ["001.A"], [], sorted(skipped)))
    assert summary.startswith("3 kind 0 (e.g. train/001.A/0); 2 kind 1 (e.g. train/001.A/1); ")
    assert summary.endswith("; and 2 more kind(s)") and summary.count("(e.g.") == 4


@pytest.mark.parametrize("setup, message", [
    (lambda r: r.mkdir(), "channel 'train' has no class folders"),
    (lambda r: None, "channel 'train' not found"),
    (lambda r: [(r / c).mkdir(parents=True) for c in ("001.A", "002.B")], "channel 'train' has no images"),
    (lambda r: [make_imagefolder(r, [c], 1) for c in ("001.cat", "002.cat")], "several folders for class"),
])
def test_bad_channel_layouts_fail_clearly(tmp_path, setup, message):
    root = tmp_path / "train"
    setup(root)
    with pytest.raises(TrainingError, match=message):
        image_folder.scan("train", root)


def test_class_differences_are_named(tmp_path):
    train = image_folder.scan("train", make_imagefolder(tmp_path / "train", ["001.A", "002.B"], 2))
    valid = image_folder.scan("valid", make_imagefolder(tmp_path / "valid", ["001.A", "003.C"], 2))
    with pytest.raises(TrainingError) as e:
        image_folder.check_same_classes(train, valid)
    assert str(e.value) == "valid has classes not in train: C; valid lacks classes of train: B"


def test_stratified_split_keeps_every_class_on_both_sides(tmp_path):
    ch = image_folder.scan("train", make_imagefolder(tmp_path / "t", ["001.A", "002.B", "003.C"], 10))
    train, valid = image_folder.stratified_split(ch, 0.2, seed=1)
    assert sorted(valid.counts().values()) == [2, 2, 2] and sorted(train.counts().values()) == [8, 8, 8]
    assert not set(train.samples) & set(valid.samples)
    assert image_folder.stratified_split(ch, 0.2, seed=1)[1].samples == valid.samples  # reproducible


def test_split_needs_two_images_per_class(tmp_path):
    ch = image_folder.scan("train", make_imagefolder(tmp_path / "t", ["001.A", "002.B"], 1))
    with pytest.raises(TrainingError, match="need at least 2"):
        image_folder.stratified_split(ch, 0.2, seed=0)


def test_dataset_drops_an_image_that_fails_to_decode(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 40), "red").save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    ds = data.ImageDataset([(str(good), 0), (str(truncated), 1)], transform=lambda im: im.size)
    images, labels, failed = data.collate([ds[0], ds[1]])
    assert failed == 1 and labels.tolist() == [0]


def test_a_seeded_draw_repeats_its_random_transform(tmp_path):
    image = tmp_path / "a.jpg"
    Image.new("RGB", (40, 40), "red").save(image)
    ds = data.ImageDataset([(str(image), 0)], transform=lambda im: torch.rand(3))  # any use of torch's RNG
    assert torch.equal(ds[(0, 7)][0], ds[(0, 7)][0]) and not torch.equal(ds[(0, 7)][0], ds[(0, 8)][0])
