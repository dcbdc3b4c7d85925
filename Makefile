# `make test` and `make demo` create .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel; see ../shared/NOTES.md: an unpinned torch pulls the multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DATA ?= ../shared/data/imagewoof10

.PHONY: venv prereqs lint test test-fast test-docker demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: container/requirements.txt launch/requirements.txt requirements-dev.txt Makefile pyproject.toml container/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet --progress-bar off "$(TORCH_SPEC)" -r container/requirements.txt -r launch/requirements.txt -r requirements-dev.txt
	# Our two packages, editable: image_classifier (container/) and launch (the repository root).
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e container -e .
	touch $@

prereqs:
	@tests/install_prereqs.sh

test: venv prereqs lint
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

test-docker: venv prereqs
	$(PY) -m pytest tests/test_docker_e2e.py tests/test_build_and_push.py

test-fast: venv
	$(PY) -m pytest -m "not slow"

demo: venv
	$(PY) demo/demo.py --data $(DATA)

clean:
	rm -rf $(VENV) .pytest_cache build
