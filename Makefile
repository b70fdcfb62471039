# The two commands of the README: `make demo` and `make test`. Each creates .venv and
# installs what it needs, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYPROJECT_SUM := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# What is installed in .venv, for this pyproject.toml: the whole development toolchain
# (STAMP: make test and the rest), or only what the demo needs (DEMO_STAMP: make demo).
STAMP := $(VENV)/.installed-$(PYPROJECT_SUM)
DEMO_STAMP := $(VENV)/.installed-demo-$(PYPROJECT_SUM)

.PHONY: demo test lint typecheck pytest docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# The demo needs the package and its 'demo' extra only (python-socketio's server and
# client, aiohttp): not the test, docs and build tools. The full toolchain includes it.
# pip>=21.3 installs a pyproject package in editable mode (older pips of Python 3.10.x).
$(DEMO_STAMP): pyproject.toml
	if [ ! -f $(STAMP) ]; then \
		$(PYTHON) -m venv $(VENV) \
		&& $(BIN)/python -m pip install --quiet 'pip>=21.3' \
		&& $(BIN)/python -m pip install --quiet -e '.[demo]'; \
	fi
	rm -f $(VENV)/.installed-demo-* && touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/presence-kit demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/python .ci/unasync.py --check
	$(BIN)/ruff check presence_kit tests examples bench docs .ci noxfile.py
	$(BIN)/ruff format --check presence_kit tests examples bench docs .ci noxfile.py

# The blocking code is made from the asyncio code (presence_kit/_async -> _sync).
.PHONY: unasync
unasync: $(STAMP)
	$(BIN)/python .ci/unasync.py

typecheck: $(STAMP)
	$(BIN)/mypy presence_kit

pytest: $(STAMP)
	$(BIN)/pytest --cov --cov-branch --cov-report=term $(PYTEST_ARGS)

# The documentation site, built into docs/_build/html (warnings are errors). Mermaid's
# browser bundle comes from npm once (into the gitignored docs/_mermaid), never a CDN.
MERMAID_VERSION ?= 11.17.2
MERMAID_JS := docs/_mermaid/$(MERMAID_VERSION)/package/dist/mermaid.min.js

$(MERMAID_JS):
	mkdir -p docs/_mermaid/$(MERMAID_VERSION)
	cd docs/_mermaid/$(MERMAID_VERSION) && npm pack --silent mermaid@$(MERMAID_VERSION) >/dev/null \
		&& tar -xzf mermaid-$(MERMAID_VERSION).tgz package/dist/mermaid.min.js \
		&& rm mermaid-$(MERMAID_VERSION).tgz

docs: $(STAMP) $(MERMAID_JS)
	$(BIN)/sphinx-build -b html -W --keep-going -n -q -D mermaid_js_path=$(abspath $(MERMAID_JS)) \
		docs docs/_build/html

test: lint typecheck docs pytest

# The benchmark suite (bench/README.md): a few minutes, results in bench/results/.
# BENCH_ARGS=--quick for a ~1 minute smoke run, BENCH_ARGS="--only m1,m4" for a subset.
bench: $(STAMP)
	$(BIN)/python -c 'import pyinstrument' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov docs/_build

# Declared = tested (noxfile.py): nox sessions on uv (both from .venv's dev extra) run the
# dependency tests on the oldest Python with every declared floor, on redis-py 6 and 7,
# and on the newest Python from the built wheel; plus the packaging check; two legs at a
# time (PRESENCE_CI_JOBS), then a summary. Pythons from pyenv, never downloaded. Venvs are
# cached in ~/.cache/presence-kit-ci/nox (PRESENCE_CI_CACHE).
# MATRIX_ARGS="floors redis6" runs some legs; `.venv/bin/nox -l` names them.
.PHONY: matrix
matrix: $(STAMP)
	$(BIN)/nox -s matrix -- $(MATRIX_ARGS)
