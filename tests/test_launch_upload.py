"""launch/upload_data.py against a stubbed S3 client (requests validated by botocore)."""
import shutil

import pytest

from sagemaker_stub import BUCKET

PREFIX = "image-classifier/data"


def listing(files):
    return {"Contents": [{"Key": f"{PREFIX}/{key}", "Size": size} for key, size in files.items()],
            "KeyCount": len(files), "IsTruncated": False}


def images(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_uploads_only_what_is_missing(sm, tiny_data, capsys):
    root = tiny_data["train"].parent
    keys = images(root)
    same, changed = keys[0], keys[1]
    sm.respond_s3("list_objects_v2", listing({same: (root / same).stat().st_size, changed: 1}),
                  {"Bucket": BUCKET, "Prefix": PREFIX + "/"})
    for _ in keys[1:]:
        sm.respond_s3("put_object", {"ETag": '"x"'})
    assert sm.run("upload_data", str(root), "--workers", "4") == 0
    sm.done()
    sent = sorted(p["Key"] for p in sm.sent_all("PutObject"))
    assert sent == [f"{PREFIX}/{k}" for k in keys[1:]]  # the changed one again, the same one not
    assert all(p["Bucket"] == BUCKET for p in sm.sent_all("PutObject"))
    out = capsys.readouterr().out
    assert f"1 of {len(keys)} files already there; {len(keys) - 1} to upload" in out
    assert f"python -m launch.train --data s3://{BUCKET}/{PREFIX}" in out


def test_dry_run_and_custom_uri_send_nothing(sm, tiny_data, capsys):
    root = tiny_data["train"].parent
    sm.respond_s3("list_objects_v2", listing({}), {"Bucket": "other", "Prefix": "dogs/v2/"})
    assert sm.run("upload_data", str(root), "--s3-uri", "s3://other/dogs/v2/", "--dry-run") == 0
    sm.done()
    assert "PutObject" not in sm.operations()
    assert f"0 of {len(images(root))} files already there" in capsys.readouterr().out


def test_a_data_set_training_would_refuse_is_not_uploaded(sm, tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data["train"].parent, root)
    extra = root / "valid" / "999.Wolf"
    extra.mkdir()
    shutil.copy(next((root / "valid").rglob("*.jpg")), extra / "w.jpg")
    with pytest.raises(SystemExit, match="not uploading: valid has classes not in train: Wolf"):
        sm.run("upload_data", str(root))
    assert sm.operations() == []
    with pytest.raises(SystemExit, match="no train/ folder"):
        sm.run("upload_data", str(root / "valid"))
