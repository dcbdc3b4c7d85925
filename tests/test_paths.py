import pytest

from image_classifier import paths
from image_classifier.errors import TrainingError


def test_a_path_hyperparameter_stays_inside_its_base_folder(tmp_path):
    base = tmp_path / "output"
    (base / "data").mkdir(parents=True)
    assert paths.inside(base, "data/debug", "debug-dir") == base / "data" / "debug"
    assert paths.inside(base, str(base / "debug"), "debug-dir") == base / "debug"  # absolute, but inside
    assert paths.inside(base, "a/../b", "debug-dir") == base / "b"
    assert paths.inside(base, ".", "debug-dir") == base


@pytest.mark.parametrize("value", ["..", "../output-2", "/etc", "data/../../x", "out", "out/x"])
def test_a_way_out_is_refused_naming_the_hyperparameter_and_its_base(tmp_path, value):
    base = tmp_path / "output"
    base.mkdir()
    (base / "out").symlink_to(tmp_path)  # a symlink out is resolved before the check
    with pytest.raises(TrainingError) as e:
        paths.inside(base, value, "debug-dir")
    assert str(e.value).startswith(f"hyperparameter 'debug-dir' must be a folder inside {base.resolve()} "
                                   f"(relative to it); got {value!r}")


@pytest.mark.parametrize("value, why", [("a\0b", "embedded null byte"), ("loop/x", "Symlink loop")])
def test_an_unusable_path_is_refused(tmp_path, value, why):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(TrainingError, match=f"hyperparameter 'feature-cache-dir' is not a usable path: .*{why}"):
        paths.inside(tmp_path, value, "feature-cache-dir")
