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


PACKAGE = ROOT / "container" / "image_classifier"


def _imports(path) -> set[str]:
    """The image_classifier modules a file imports (relative imports resolved), e.g. 'training.train'."""
    import ast
    inside = PACKAGE.parent in path.parents
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1] if inside else ()  # ('image_classifier',
    # 'training') for a file of the package; launch's relative imports stay in launch
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module + "." + alias.name for alias in node.names]
            found |= {n for n in [module, *names] if n.startswith("image_classifier")}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("image_classifier")}
    return {name.removeprefix("image_classifier").lstrip(".") for name in found}


def _room(module: str) -> str:
    return module.split(".")[0] if module.split(".")[0] in ("training", "serving") else "root"


def test_each_program_has_its_room_and_the_root_holds_what_both_share():
    """training/ (what `train` runs) and serving/ (what `serve` runs) never import each other; the
    package root imports neither: it is what both share."""
    crossing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for module in _imports(path):
            target = _room(module) if module else "root"
            if target != "root" and target != room:
                crossing.append(f"{path.relative_to(ROOT)} ({room}) imports {module}")
    assert crossing == []
    assert {p.parent.name for p in PACKAGE.rglob("*.py")} == {"image_classifier", "training", "serving"}


def test_the_launch_side_imports_only_the_shared_root():
    """launch/ runs the image's programs (training.audit as a process), never imports their rooms."""
    offending = [f"{path.relative_to(ROOT)}: {module}" for path in sorted((ROOT / "launch").rglob("*.py"))
                 for module in _imports(path) if _room(module) != "root"]
    assert offending == []


def test_training_reads_the_environment_in_one_module():
    """training/environment.py holds every variable `train` reads (and generates its --help table)."""
    readers = sorted(str(p.relative_to(ROOT)) for p in (PACKAGE / "training").glob("*.py")
                     if re.search(r"os\.environ|os\.getenv", p.read_text()) and p.name != "environment.py"
                     and p.name != "job.py")
    assert readers == []
    job = (PACKAGE / "training" / "job.py").read_text()
    assert re.findall(r"os\.environ\b(?!\})", job.replace("{**os.environ", "")) == []  # passed on to torchrun only
