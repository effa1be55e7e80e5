# Quick start: `make pipeline` (set up, then run every stage on the sample data) and `make test`.
VENV ?= .venv
PYTHON ?= python3
# The CPU/CUDA wheels this project is tested with; override for another CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup pipeline lint test test-fast bench clean ui

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# register: the registry and the champion alias follow the checkout even when DVC skipped
# train_gan and evaluate (a fresh clone, an unchanged rerun)
pipeline: setup
	dvc repro
	decrappify register
	dvc metrics show

# lint and format first: seconds, and a failure names the file and line
lint: setup
	ruff check .
	ruff format --check .

test: lint
	pytest -q

test-fast: setup
	pytest -q -m "not slow"

# fastai for the comparisons; TORCH_SPEC again so that pip keeps the pinned torch
$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]' $(TORCH_SPEC)
	touch $@

# all benchmarks (~15 min on 2 cores), results in bench/results/; BENCH_ARGS="NAME --quick" etc.
bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)

UI_PORT ?= 5000
# The MLflow UI over the store the stages log to (the same absolute URI), on loopback only.
ui: setup
	@uri=$$($(BIN)/python -c "from pipelines.running.tracking import project_tracking_uri; print(project_tracking_uri())"); \
	case "$$uri" in http*) echo "the runs are on the tracking server $$uri: open it"; exit 0;; esac; \
	echo "MLflow UI on http://127.0.0.1:$(UI_PORT) over $$uri (Ctrl-C stops it)"; \
	exec $(BIN)/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port $(UI_PORT)

clean:
	rm -rf $(VENV)
