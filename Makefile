# One command per job. `make setup` builds .venv; every other target uses it.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export PYTHONPATH := $(CURDIR)

.PHONY: setup test test-fast bench bench-sweep lock check-lock

# constraints.txt is the lock of the whole environment (every distribution, exact versions);
# setup installs from it and nothing else floats. Everything comes from PyPI (`--isolated`: a
# machine's pip config, e.g. a local CPU-only torch wheel that would shadow the build torchvision
# is compiled against, is not consulted). `make lock` refreshes the lock on purpose.
setup: .venv/.ready
.venv/.ready: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) --isolated install -q -c constraints.txt torch torchvision
	$(PIP) --isolated install -q -c constraints.txt -e ".[dev]"
	$(PY) .ci/lock.py check constraints.txt
	touch $@

# fresh venv from .ci/pins.txt (the versions we choose) -> constraints.txt (everything resolved)
lock:
	rm -rf .lockenv && python3 -m venv .lockenv
	.lockenv/bin/pip --isolated install -q -c .ci/pins.txt torch torchvision
	.lockenv/bin/pip --isolated install -q -c .ci/pins.txt -e ".[dev]"
	.lockenv/bin/python .ci/lock.py write constraints.txt
	rm -rf .lockenv
	@echo "lock refreshed: review 'git diff constraints.txt', then make setup && make test"

check-lock: setup
	$(PY) .ci/lock.py check constraints.txt

test: setup check-lock
	$(PY) -m pytest -q

test-fast: setup check-lock
	$(PY) -m pytest -q -m "not slow"

# Compression latency per method, official OTT-Vid vs ours (OFFICIAL_OTTVID=<extracted minseokii/OTT-Vid
# tree>), and the T = 64..768 time/peak-memory table (docs/efficiency.md). BENCH_ARGS: extra flags.
OFFICIAL_OTTVID ?=
BENCH_ARGS ?=
bench: setup
	$(PY) -m ottvid.bench $(if $(OFFICIAL_OTTVID),--official-ottvid $(OFFICIAL_OTTVID),) $(BENCH_ARGS)

# demo grid per-cell vs shared encoding (one run), and the modelled GPU-hours of the real Table 1
bench-sweep: export OMP_NUM_THREADS ?= 1
bench-sweep: setup synthetic
	$(PY) -m runners.bench_sweep

# ---- experiment harness (docs/harness.md) -------------------------------------------------
# EXTRA: extra Hydra overrides for every cell, e.g. EXTRA="limit=20 wandb.mode=disabled".
# DRY=1 lists an experiment's cells (done / pending) without running them.
# SCALE=demo runs the same grid on the tiny offline twins of the backbones and the synthetic
# shards (configs/scale/demo.yaml), on CPU; tables go to results/tables/demo/, figures to
# results/figures/demo/. Default: the real grid (7B checkpoints, GPU).
EXTRA   ?=
DRYARG  := $(if $(DRY),dry_run=true,)
EXP     ?= table1
SCALE   ?=
SCALEARG := $(if $(SCALE),scale=$(SCALE),)
FIGARG  := $(if $(SCALE),--scale $(SCALE),)
FIGDIR  := results/figures$(if $(filter-out real,$(SCALE)),/$(SCALE),)
# off the real scale the synthetic shards must exist; one torch thread per process keeps the tiny
# models' CPU latencies free of thread-oversubscription stalls on shared cores
DEMODEP := $(if $(filter-out real,$(SCALE)),synthetic,)
ifneq ($(filter-out real,$(SCALE)),)
export OMP_NUM_THREADS ?= 1
endif
ABLATIONS := table3 spatial tau_b tau_m tau_c alpha gamma_sweep

.PHONY: demo table1 table2 ablations efficiency sweep synthetic fig3 figures visualize artefacts-demo

synthetic: setup
	$(PY) -m tasks.synthetic.generate

# Table 1 grid on the tiny offline Qwen2.5-VL and the six synthetic shards, on CPU.
demo: export OMP_NUM_THREADS ?= 1
demo: setup synthetic
	$(PY) -m runners.sweep experiment=demo $(EXTRA)
	$(PY) -m runners.aggregate experiment=demo $(EXTRA)

table1: setup $(DEMODEP)
	$(PY) -m runners.sweep experiment=table1 $(SCALEARG) $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=table1 $(SCALEARG) $(EXTRA))

table2: setup $(DEMODEP)
	$(PY) -m runners.sweep experiment=table2 $(SCALEARG) $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=table2 $(SCALEARG) $(EXTRA))

# Tables 3 (A2), A1, A3, A4, A5, A6 beside the published numbers, and the gamma sweep + Figure 3.
ablations: setup $(DEMODEP)
	for e in $(ABLATIONS); do \
	  $(PY) -m runners.sweep experiment=$$e $(SCALEARG) $(DRYARG) $(EXTRA) || exit 1; \
	  $(if $(DRY),true,$(PY) -m runners.aggregate experiment=$$e $(SCALEARG) $(EXTRA)) || exit 1; \
	done
	$(if $(DRY),,$(PY) -m runners.figures fig3 $(FIGARG))

# Table 4 (efficiency at r = 0.10): results/tables[/demo]/table4_efficiency.md
efficiency: setup $(DEMODEP)
	$(PY) -m runners.sweep experiment=table4 $(SCALEARG) $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=table4 $(SCALEARG) $(EXTRA))

# Figure 3: the gamma sweep (table + cells), then results/figures[/demo]/fig3_gamma.{png,csv}
fig3: setup $(DEMODEP)
	$(PY) -m runners.sweep experiment=gamma_sweep $(SCALEARG) $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=gamma_sweep $(SCALEARG) $(EXTRA))
	$(if $(DRY),,$(PY) -m runners.figures fig3 $(FIGARG))

# Figures A2-A4: OTT-Vid at its defaults, r = 0.10, on every benchmark of Tables 1-2, then
# results/figures[/demo]/figA2_budget_cv, figA3_rho, figA4_budget_time (.png + .csv)
figures: setup $(DEMODEP)
	$(PY) -m runners.sweep experiment=figures $(SCALEARG) $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.figures all $(FIGARG))

# Retained tokens of one video: make visualize [VIDEO=...] [METHOD=ottvid] [RETENTION=0.1]
#   [BACKBONE=tiny_qwen2_5_vl] [PRETRAINED=<checkpoint, real backbones>] [SET="tau_m=inf gamma=0"]
VIDEO     ?= tests/data/moving_square.mp4
METHOD    ?= ottvid
RETENTION ?= 0.1
BACKBONE  ?= tiny_qwen2_5_vl
PRETRAINED ?=
SET       ?=
VISOUT    ?= results/figures/visualize/$(basename $(notdir $(VIDEO)))__$(BACKBONE)__$(METHOD)__r$(RETENTION)$(if $(SET),__$(subst $() ,_,$(SET))).png
visualize: export OMP_NUM_THREADS ?= 1
visualize: setup $(if $(filter cache/synthetic/%,$(VIDEO)),synthetic,)
	$(PY) -m runners.visualize --video $(VIDEO) --backbone $(BACKBONE) --method $(METHOD) --retention $(RETENTION) \
	  $(if $(PRETRAINED),--pretrained $(PRETRAINED),) $(foreach kv,$(SET),--set $(kv)) --out $(VISOUT)

# Any experiment: make sweep EXP=tau_b [SCALE=demo] EXTRA="launcher=hydra hydra/launcher=slurm"
sweep: setup $(DEMODEP)
	$(PY) -m runners.sweep experiment=$(EXP) $(SCALEARG) $(DRYARG) $(EXTRA)
	$(if $(DRY),,$(PY) -m runners.aggregate experiment=$(EXP) $(SCALEARG) $(EXTRA))
	$(if $(DRY),,$(if $(filter gamma_sweep,$(EXP)),$(PY) -m runners.figures fig3 $(FIGARG),))
