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

# ---- experiment harness (docs/harness.md) -------------------------------------------------
# EXTRA: extra Hydra overrides for every cell, e.g. EXTRA="limit=20 wandb.mode=disabled".
# DRY=1 lists an experiment's cells (done / pending) without running them.
EXTRA   ?=
DRYARG  := $(if $(DRY),dry_run=true,)
EXP     ?= table1

.PHONY: demo table1 table2 ablations efficiency sweep synthetic

synthetic: setup
	$(PY) -m tasks.synthetic.generate

# Table 1 grid on the tiny offline Qwen2.5-VL and the six synthetic shards, on CPU.
demo: setup synthetic
	$(PY) -m runners.sweep experiment=demo $(EXTRA)
	$(PY) -m runners.aggregate experiment=demo $(EXTRA)

table1: setup
	$(PY) -m runners.sweep experiment=table1 $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=table1 $(EXTRA))

table2: setup
	$(PY) -m runners.sweep experiment=table2 $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=table2 $(EXTRA))

ablations: setup
	for e in table3 gamma_sweep tau_b tau_m tau_c alpha spatial; do \
	  $(PY) -m runners.sweep experiment=$$e $(DRYARG) $(EXTRA) || exit 1; \
	  $(if $(DRY),true,$(PY) -m runners.aggregate experiment=$$e $(EXTRA)) || exit 1; \
	done

efficiency: setup
	$(PY) -m runners.sweep experiment=table4 $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=table4 $(EXTRA))

# Any experiment: make sweep EXP=tau_b EXTRA="launcher=hydra hydra/launcher=slurm"
sweep: setup
	$(PY) -m runners.sweep experiment=$(EXP) $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=$(EXP) $(EXTRA))
