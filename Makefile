# instseg: `make train` trains + evaluates the default synthetic model, `make test` runs the test suite.
# Both create .venv in the checkout when it is missing and install everything into it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/Baselines/mask_rcnn_R_18_FPN_synthetic.yaml
OUTPUT_DIR ?= output/make_train
TRAIN_ARGS ?=
# training processes (detectron2's --num-gpus): see instseg.cpu.default_train_processes
TRAIN_PROCS ?= $(shell $(PY) -m instseg.cpu 2>/dev/null || echo 1)
PYTEST_ARGS ?=
# detectron2 is not on the package registry: it comes from $(DETECTRON2_SRC) (a local checkout) when
# set, otherwise from its official source.
DETECTRON2_URL ?= git+https://github.com/facebookresearch/detectron2.git
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' 2>/dev/null)

.PHONY: train test lint format venv detectron2 require-detectron2 clean leaderboard

$(VENV)/.deps: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip wheel setuptools
	$(PIP) install --quiet -r requirements.txt
	@touch $@

# the project itself, editable, with the C++/CUDA extension instseg._C
$(VENV)/.instseg: $(VENV)/.deps setup.py $(EXT_SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install --no-build-isolation -e .
	@touch $@

venv: $(VENV)/.instseg

# Installs detectron2 unless it is importable; fails (exit 1) with a message when that is not possible.
detectron2: venv
	@if $(PY) -c "import detectron2" 2>/dev/null; then exit 0; fi; \
	src="$${DETECTRON2_SRC:-$(DETECTRON2_URL)}"; \
	if [ -d "$$src" ]; then spec=(-e "$$src"); else spec=("$$src"); fi; \
	echo "Installing detectron2 from $$src ..."; \
	if ! MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install --no-build-isolation "$${spec[@]}"; then \
	  echo ""; \
	  echo "Could not install detectron2 from $$src."; \
	  echo "Provide it in one of these ways, then run make again:"; \
	  echo "  * DETECTRON2_SRC=/path/to/a/detectron2/checkout make ...   (git clone https://github.com/facebookresearch/detectron2)"; \
	  echo "  * $(PIP) install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"; \
	  exit 1; \
	fi

require-detectron2:
	@$(MAKE) --no-print-directory detectron2 || { \
	  echo "make train: detectron2 is required for training; see the message above." >&2; exit 1; }

train: venv require-detectron2
	$(PY) train_net.py --config-file $(CONFIG) --num-gpus $(TRAIN_PROCS) OUTPUT_DIR $(OUTPUT_DIR) $(TRAIN_ARGS)

# every method on the synthetic data, trained (or reused) and compared: output/leaderboard/ (tools/leaderboard.py)
LEADERBOARD_ARGS ?=
leaderboard: venv require-detectron2
	$(PY) tools/leaderboard.py --num-gpus $(TRAIN_PROCS) $(LEADERBOARD_ARGS)

test: venv
	@$(MAKE) --no-print-directory detectron2 || \
	  echo "make test: continuing without detectron2; the tests that need it are skipped (reasons below)."
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (lint, import order, format; ruff.toml) on the Python tree and clang-format (.clang-format) on csrc/
CSRC_FILES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' 2>/dev/null | sort)
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC_FILES)

# rewrites the tree the way `make lint` wants it
format: $(VENV)/.deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CSRC_FILES)

clean:
	rm -rf build output *.egg-info instseg/_C*.so
