"""The README says what the code does: its hyperparameter table and metric names match the code."""
import re

from conftest import ROOT
from image_classifier import hyperparameters, metrics

README = (ROOT / "README.md").read_text()


def test_readme_hyperparameter_table_matches_the_code():
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| \w+ \| `([^`]*)` \|", README, re.M))
    assert set(rows) == set(hyperparameters.BY_NAME)
    for hp in hyperparameters.HYPERPARAMETERS:
        assert hp.type(rows[hp.name]) == hp.default, hp.name


def test_readme_names_every_metric():
    for definition in metrics.METRIC_DEFINITIONS:
        assert f"`{definition['Name']}`" in README
