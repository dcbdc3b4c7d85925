"""The project's shape (issue 17): both packages installed, the image's package self-contained,
and sys.path edited only by the two programs that must run from a checkout."""
import importlib.metadata
import re
import subprocess

from conftest import ROOT

import image_classifier
import launch


def tracked_python() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files", "*.py", "container/train", "container/serve"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return {name: (ROOT / name).read_text() for name in names if (ROOT / name).is_file()}


def test_only_the_two_programs_edit_sys_path():
    editing = sorted(name for name, text in tracked_python().items() if "sys.path.insert" in text
                     and name != "tests/test_layout.py")
    assert editing == ["container/serve", "container/train"]


def test_both_packages_are_installed_from_this_checkout():
    for distribution, package, folder in [("image-classifier", image_classifier, "container"),
                                          ("image-classifier-launch", launch, "")]:
        assert importlib.metadata.version(distribution) == "0.1.0"
        assert package.__file__.startswith(str((ROOT / folder).resolve()))  # editable: this tree's files


def test_the_image_package_does_not_need_the_launch_side():
    """The Docker image holds container/ only."""
    offending = [name for name, text in tracked_python().items() if name.startswith("container/")
                 and re.search(r"^\s*(from|import) launch\b", text, re.M)]
    assert offending == []
