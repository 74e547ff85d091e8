# Two commands on a fresh machine: `make run` (set up + dashboard) and `make test` (set up + tests).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run share test test-fast browser checkpoints bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, streamlit, faiss, umap, captum, pytorch_metric_learning"
	@# the `metriclens` command (pyproject.toml), editable: the code stays here; without it `python -m core` still works
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	@test -x $(VENV)/bin/metriclens || echo "note: the metriclens command was not installed; use python -m core ..."
	touch $(STAMP)

# Debian's Chromium for the Playwright browser tests (never `playwright install`: no downloads here)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install -y chromium' for the browser tests (they skip without it)"; fi; }

# loopback by default: only this machine can open the dashboard. `make share` (or
# METRICLENS_ADDRESS=0.0.0.0 make run) serves the network, in teaching mode unless METRICLENS_MODE=full.
ADDRESS := $(or $(METRICLENS_ADDRESS),127.0.0.1)
PORT    := $(or $(METRICLENS_PORT),8501)

run: setup
	@$(PY) -m dashboard.access --address $(ADDRESS) --port $(PORT)
	$(VENV)/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) \
	  --server.headless true --browser.gatherUsageStats false

share:
	@$(MAKE) --no-print-directory run METRICLENS_ADDRESS=0.0.0.0

test: setup browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser"

checkpoints: setup
	$(PY) -m benchmarks.make_checkpoints

bench: setup
	$(PY) -m benchmarks.run_all

clean:
	rm -rf .cache test-output
