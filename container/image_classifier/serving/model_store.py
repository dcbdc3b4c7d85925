"""Model folders are data, never code.

MMS treats a model folder as a program: a `MAR-INF/MANIFEST.json` there names a handler that it
imports instead of ours, it puts the folder on the worker's sys.path (any `.py` there shadows an
optional import, e.g. torchvision's `accimage`), and sagemaker-inference adds `code/` to PYTHONPATH
and pip-installs `code/requirements.txt`. So MMS never sees a model folder itself: `stage` links
the two files our loader reads (model.pt, model.json) into a fresh folder in `serve`'s private run
directory and hands MMS that one. Everything else in the artifact is ignored, with one log line.

`model_url` checks what a multi-model endpoint is asked to load: SageMaker sends the absolute
local path of a model it has downloaded under /opt/ml/models; a URL or a path elsewhere is refused.
"Under" is checked on real paths: the folder and the files `stage` links (symlinks followed) must
resolve inside the models root, itself resolved once (model_root), so that a link in a model folder
cannot serve a file from elsewhere and a relative SAGEMAKER_BASE_DIR works.
"""
from __future__ import annotations

import functools
import itertools
import logging
import re
from pathlib import Path

from .. import paths
from ..paths import MANIFEST_FILE, WEIGHTS_FILE  # not from artifact: the front never imports torch

log = logging.getLogger(__name__)

USED = (WEIGHTS_FILE, MANIFEST_FILE)
# What makes MMS or sagemaker-inference run or install code from a model folder.
EXECUTABLE = re.compile(r"(^|/)(MAR-INF|MANIFEST\.json|code)(/|$)|\.(py|pyc|pyo|so|pth|sh|mar|whl|egg)$", re.I)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # no '/', never '..'; MMS's own names fit
SCAN_LIMIT = 10_000  # entries looked at for the log line; a folder that large is not walked to the end


class Refused(Exception):
    """A load request that this endpoint will not carry out; str(e) says why."""


@functools.cache
def model_root() -> Path:
    """Where a multi-model endpoint's models live: SageMaker downloads them under /opt/ml/models.
    Resolved (absolute, symlinks followed) on the first call, which `serve` makes at start-up,
    and kept: SAGEMAKER_BASE_DIR may be relative, and no request changes what the root is.
    Tests that change SAGEMAKER_BASE_DIR call model_root.cache_clear()."""
    return (paths.base_dir() / "models").resolve()


def _real(path: Path, what: str) -> Path:
    """PATH with every symlink followed; Refused naming WHAT when it does not exist or loops."""
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        raise Refused(f"{what} is not a folder") from None
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a file as a folder, a NUL
        raise Refused(f"{what} cannot be resolved ({type(e).__name__}: {e})") from None


def _inside(real: Path, root: Path, what: str) -> Path:
    """REAL (resolved), refused naming WHAT unless it lies inside ROOT (resolved)."""
    if not real.is_relative_to(root):
        raise Refused(f"{what} is not under {root}: it resolves to {real} (a symlink to outside the "
                      "models folder); a model's folder and files must be under it")
    return real


def model_url(url: object) -> Path:
    """The model folder a POST /models may load, resolved: an absolute path whose real location
    (symlinks followed) is a folder under model_root(), no URL."""
    if not isinstance(url, str) or not url:
        raise Refused('"url" must be the model folder\'s absolute path')
    root = model_root()
    if "://" in url or url.startswith("file:"):
        raise Refused(f"url {url!r}: only a local folder under {root} is loaded, never a URL")
    path = Path(url)
    if not path.is_absolute() or ".." in path.parts:
        raise Refused(f"url {url!r} is not a folder under {root}")
    real = _real(path, f"url {url!r}")
    if not real.is_relative_to(root):
        raise Refused(f"url {url!r} is not a folder under {root}"
                      + (f": it resolves to {real} (a symlink to outside the models folder)" if real != path else ""))
    if not real.is_dir():
        raise Refused(f"url {url!r} is not a folder")
    return real


def model_name(name: object) -> str:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise Refused(f'"model_name" {name!r} must be 1-128 letters, digits, ".", "_" or "-", '
                      "starting with a letter or digit")
    return name


def foreign_files(model_dir: Path) -> list[str]:
    """Entries of the artifact that would run or install code under MMS (relative paths)."""
    found = []
    for path in sorted(itertools.islice(Path(model_dir).rglob("*"), SCAN_LIMIT)):
        rel = path.relative_to(model_dir).as_posix()
        if EXECUTABLE.search(rel) and not any(rel.startswith(f + "/") for f in found):
            found.append(rel)
    return found


def stage(model_dir: Path, staging: Path, root: Path | None = None) -> Path:
    """A folder for MMS holding only links to model_dir's model.pt and model.json (their real paths).
    With ROOT (multi-model: model_root()), model_dir and each of those files must resolve inside
    it, else Refused naming the one that does not, and nothing is staged; without it (the single
    model in /opt/ml/model, the user's own) symlinks may point anywhere."""
    model_dir = Path(model_dir)
    targets = {}
    if root is not None:
        _inside(_real(model_dir, f"model folder {str(model_dir)!r}"), root, f"model folder {str(model_dir)!r}")
    for name in USED:
        if (model_dir / name).exists():  # a missing file is the loader's to report, with its reason
            targets[name] = (model_dir / name).resolve()
            if root is not None:
                _inside(targets[name], root, f"{name} ({model_dir / name})")
    foreign = foreign_files(model_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        log.warning("model %s: ignoring %s (this image runs only its own code; model folders are data)",
                    model_dir, shown)
    staging.mkdir(parents=True)
    for name, target in targets.items():
        (staging / name).symlink_to(target)  # the path checked above, not the link again
    return staging
