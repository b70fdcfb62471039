# The two commands of the README: `make demo` and `make test`. Each creates .venv and
# installs what it needs, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck pytest docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo,hiredis]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/presence-kit demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check presence_kit tests examples
	$(BIN)/ruff format --check presence_kit tests examples

typecheck: $(STAMP)
	$(BIN)/mypy presence_kit

pytest: $(STAMP)
	$(BIN)/pytest --cov --cov-branch --cov-report=term $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov docs/_build
