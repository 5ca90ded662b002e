# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (on this kind of machine pip finds it on disk); override for CUDA, e.g.
# make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" install
TORCH_SPEC ?= torch==2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.tessera/dagster

.PHONY: install demo test test-fast dev serve clean

# uv installs the project in seconds where pip takes minutes (README: "Install"); where uv cannot be
# had or fails, pip does it. uv reads PIP_FIND_LINKS's folders too (where this machine keeps torch).
# Both write every module's bytecode at install (uv --compile-bytecode; pip does by default), and the
# project's own is compiled too: where PYTHONDONTWRITEBYTECODE is set (this kind of machine, many CI
# images) nothing is ever cached, and each Dagster run's processes would compile dagster, torch and
# scikit-learn from source again (the code location's import, 4.4 s -> 1.7 s here).
UV_ENV := $(if $(PIP_FIND_LINKS),UV_FIND_LINKS="$(PIP_FIND_LINKS)")

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/pip install --quiet uv >/dev/null 2>&1 \
	   && $(UV_ENV) $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(TORCH_SPEC) \
	   && $(UV_ENV) $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e ".[test]"; then \
	  echo "installed with uv"; \
	else \
	  echo "uv unavailable or failed: installing with pip (a few minutes)"; \
	  $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet $(TORCH_SPEC) \
	  && $(BIN)/pip install --quiet -e ".[test]"; \
	fi
	@$(BIN)/python -m compileall -q -j 0 model resources tessera_assets >/dev/null
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
