# The two commands the README promises: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run cluster test lint typecheck pytest fuzz bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/durchwahl serve --config examples/office.toml

# Redis, Kamailio (the edge) and two nodes on loopback (apt-get install kamailio redis-server); Ctrl-C stops all.
cluster: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[cluster]'
	$(BIN)/python -m routing.cluster_run

lint: $(STAMP)
	$(BIN)/ruff check durchwahl/__init__.py sipcore media routing tests fuzz bench examples .ci
	$(BIN)/ruff format --check durchwahl/__init__.py sipcore media routing

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	$(BIN)/python fuzz/fuzz_parse.py -max_total_time=$${FUZZ_SECONDS:-60} fuzz/corpus

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/bench_parse.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
