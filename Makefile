# One command per job. `make setup` builds .venv; every other target uses it.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export PYTHONPATH := $(CURDIR)

.PHONY: setup test test-fast bench

# torch/torchvision come from PyPI (`--isolated`: a local CPU-only torch wheel named in a
# pip config would shadow the build torchvision is compiled against). Install your own
# CUDA build first if you need another one: setup keeps a working pinned pair.
setup: .venv/.ready
.venv/.ready: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) --isolated install -q "torch==2.13.0" "torchvision==0.28.0"
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m ottvid.bench
