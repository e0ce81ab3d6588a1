# Fresh machine with Python 3.11 + pip:  `make app` (dashboard) or `make test` (test suite).
# Both create .venv on first use and install torch (pinned in constraints.txt) and vaelab;
# the stamp file makes later runs skip installation until pyproject.toml or constraints.txt
# change.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: app test install browser clean-venv site

app: $(STAMP)
	$(VENV)/bin/streamlit run app.py --server.headless true

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest

# The course as a static site: every notebook executed and rendered to HTML, with an index, in
# build/site/ (`make site VAELAB_SMALL=1` for the short run of each notebook).
site: $(STAMP)
	VAELAB_SMALL=$(VAELAB_SMALL) $(VENV)/bin/python -m vaelab course site build/site

# The end-to-end dashboard test drives Debian's Chromium (never a browser download): install it
# when missing, as root or through sudo; otherwise say how.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "Chromium is missing: install it (apt-get install chromium) for the browser test"; \
	  exit 1; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, on its own, so that the pin in constraints.txt picks the build
$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install torch==2.13.0 -c constraints.txt
	$(VENV)/bin/pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
