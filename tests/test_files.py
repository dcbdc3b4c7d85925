"""The two small helpers every writer and every failure reason share."""
import pytest

from image_classifier import files
from image_classifier.errors import described, first_line


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model.json"
    files.atomic_write_text(target, "old")
    files.atomic_write_text(target, "new")
    assert target.read_text() == "new"

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, half_then_crash)
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


@pytest.mark.parametrize("error, line, whole", [
    (ValueError("bad value\nsecond line"), "bad value", "ValueError: bad value"),
    (KeyError(), "KeyError", "KeyError"),  # an empty message: the type, never an IndexError
    (RuntimeError("  \n "), "RuntimeError", "RuntimeError"),
    (OSError("\n  [Errno 28] No space left\n"), "[Errno 28] No space left", "OSError: [Errno 28] No space left"),
])
def test_first_line_and_described(error, line, whole):
    assert first_line(error) == line and described(error) == whole
