"""The docs say what the code does: the hyperparameter table is the one the code generates, every
metric is named, the README fits on a screen and every link between the docs resolves."""
import re

from conftest import ROOT
from image_classifier import hyperparameters, metrics

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
TRAINING = (ROOT / "docs" / "TRAINING.md").read_text()


def test_the_hyperparameter_table_is_the_generated_one():
    """docs/TRAINING.md carries `python -m image_classifier.hyperparameters`'s table verbatim."""
    assert hyperparameters.markdown_table() in TRAINING
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| \w+ \| `([^`]*)` \|", TRAINING, re.M))
    assert set(rows) == set(hyperparameters.BY_NAME)


def test_every_metric_is_named():
    for definition in metrics.METRIC_DEFINITIONS:
        assert f"`{definition['Name']}`" in TRAINING


def test_the_readme_fits_on_a_screen():
    assert len(README.read_text().splitlines()) <= 150


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_resolves():
    checked = 0
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue  # the web: not reachable from here
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.name}: {target} does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
                assert anchor in {slug(h) for h in headings}, f"{page.name}: no heading #{anchor} in {file.name}"
            checked += 1
    assert checked >= 15
