# The two commands: `make run` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080
STATE  ?= server_state.json

.PHONY: run engine test test-deps lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install only when the dependency lists change.
$(VENV)/.installed: $(BIN)/python requirements.txt requirements-test.txt setup.cfg
	$(BIN)/pip install --quiet -r requirements-test.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: $(VENV)/.installed
	@if [ -z "$$DISTCONV_API_KEY" ] && [ -z "$$DISTCONV_API_KEY_FILE" ]; then \
	  key=$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(32))'); \
	  echo "No DISTCONV_API_KEY set; this run's key: $$key"; \
	  export DISTCONV_API_KEY=$$key; \
	  exec $(BIN)/dispatch-server --host $(HOST) --port $(PORT) --state-file $(STATE); \
	else \
	  exec $(BIN)/dispatch-server --host $(HOST) --port $(PORT) --state-file $(STATE); \
	fi

# A transcoding engine for the server of `make run` (same DISTCONV_API_KEY); more
# settings as DISTCONV_* variables or ENGINE_ARGS (README "Run a farm").
engine: $(VENV)/.installed
	exec $(BIN)/dispatch-engine --server http://$(HOST):$(PORT) $(ENGINE_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy dispatch

# nginx and systemd-analyze, for the deployment tests (installed when missing).
test-deps:
	bash scripts/test-deps.sh

test: lint test-deps
	$(BIN)/python -m pytest

# The bench package runs from the repository root (bench/README.md).
bench: $(VENV)/.installed
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.service_ops
	$(BIN)/python -m bench.postgres
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.dashboard
	$(BIN)/python -m bench.files
	$(BIN)/python -m bench.chunked

# Lay the server out under PREFIX (default /opt/distconv/server); see README "Deployment".
install:
	bash scripts/install.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
