# Two commands do everything on a fresh machine (README "Quick start"):
#   make demo   set up .venv and run the main job on a bundled sample model
#   make test   set up .venv and run the test suite (what CI runs: .ci/run)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup

setup: $(STAMP)

# CPU torch first (a bare `torch` requirement can pull a multi-GB CUDA build), then the project
# with its test extra, then laplace-torch 0.3 for the side-by-side tests (tests/compare,
# tests/compat) with --no-deps: its own requirements would replace torch with a CUDA build
# (docs/compare.md). Without it those tests skip, so a failed install does not fail the setup.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	$(PY) -m pip install --no-deps laplace-torch==0.3 asdfghjkl==0.1a4 backpack-for-pytorch==1.7.1 \
	    curvlinops-for-pytorch==3.0.1 torchmetrics opt-einsum tqdm scipy einops unfoldNd einconv \
	    linear_operator lightning-utilities \
	    || echo "laplace-torch not installed: tests/compare and tests/compat will skip"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/laplace run recipes/digits_mlp_kron.yaml --output runs/digits_mlp

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	$(VENV)/bin/ruff check laplace_cli tests benchmarks sample_models
	$(VENV)/bin/lint-imports
