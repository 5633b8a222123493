# Two commands take a fresh clone to a working state: `make demo` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install what they need.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minivit-installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check minivit tests benchmarks
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/minivit demo

lint: $(STAMP)
	$(PY) -m ruff check minivit tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/latency.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
