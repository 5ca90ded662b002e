# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (on this kind of machine pip finds it on disk); override for CUDA, e.g.
# make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" install
TORCH_SPEC ?= torch==2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.tessera/dagster

.PHONY: install demo test test-fast dev serve clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/tessera demo

test: install
	$(BIN)/python -m pytest -q

# everything but the slow system tests (tests/system): a few minutes
test-fast: install
	$(BIN)/python -m pytest -q -m "not system"

dev: install
	mkdir -p $(DAGSTER_HOME)
	cp -n deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

serve: install
	$(BIN)/tessera serve

clean:
	rm -rf .tessera
