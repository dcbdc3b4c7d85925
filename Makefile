# `make test` and `make demo` create .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel; see ../shared/NOTES.md: an unpinned torch pulls the multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DATA ?= ../shared/data/imagewoof10

.PHONY: venv test test-fast demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: container/requirements.txt requirements-dev.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet --progress-bar off "$(TORCH_SPEC)" -r container/requirements.txt -r requirements-dev.txt
	touch $@

test: venv
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow"

demo: venv
	$(PY) demo/demo.py --data $(DATA)

clean:
	rm -rf $(VENV) .pytest_cache build
