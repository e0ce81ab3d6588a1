# Fresh machine with Python 3.11 + pip:  `make app` (dashboard) or `make test` (test suite).
# Both create .venv on first use and install torch (pinned in constraints.txt) and vaelab with
# the extras they need ([app] for the dashboard; [test] for everything); the stamp files make
# later runs skip installation until pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the quick tier: unit tests only (no notebooks, browser, processes or nbgrader)
FAST := not slow and not browser and not integration and not notebook

.PHONY: app test test-fast lint format install browser clean-venv site

app: $(VENV)/.installed-app
	$(BIN)/streamlit run app.py --server.headless true

test: $(VENV)/.installed-test browser
	$(BIN)/python -m pytest

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "$(FAST)"

# the habits CI checks: ruff's rules (pyproject.toml), ruff's formatting, mypy over vaelab/
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The course as a static site: every notebook executed and rendered to HTML, with an index, in
# build/site/ (`make site VAELAB_SMALL=1` for the short run of each notebook).
site: $(VENV)/.installed-test
	VAELAB_SMALL=$(VAELAB_SMALL) $(BIN)/python -m vaelab course site build/site

# The end-to-end dashboard test drives Debian's Chromium (never a browser download): install it
# when missing, as root or through sudo; otherwise say how.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "Chromium is missing: install it (apt-get install chromium) for the browser test"; \
	  exit 1; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

install: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, on its own, so that the pin in constraints.txt picks the build
$(VENV)/.installed-app: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -c constraints.txt -e ".[app]"
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install torch==2.13.0 -c constraints.txt
	$(BIN)/pip install -c constraints.txt -e ".[test]"
	touch $@ $(VENV)/.installed-app

clean-venv:
	rm -rf $(VENV)
