# `make demo` and `make test` are the two entry points; each builds .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install browser bench serve clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,demo]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/glipv2 demo

# lint: ruff (rules and format) and the import-linter layer contracts of pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	cd src && ../$(VENV)/bin/lint-imports ../pyproject.toml

# the browser test (tests/serve/test_serve_browser.py) needs Debian's chromium; installed here when root
browser:
	@bash scripts/ensure_chromium.sh

test: lint browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=12

serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/glipv2 serve

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/latency.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
