# covidnetx: the two commands (see README). Both do the whole set-up first; set-up is idempotent and
# skips every step whose result is already there (a second run takes seconds, Horovod is not rebuilt).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export OMPI_ALLOW_RUN_AS_ROOT ?= 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ?= 1
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean help

help:
	@echo "make demo   set-up, then the main job on the built-in synthetic data"
	@echo "make test   set-up, then the whole test suite"
	@echo "make bench  set-up, then the benchmarks (benchmarks/)"

setup:
	@bash .ci/setup_env.sh

# the Slurm tests start a local cluster: the set-up installs Slurm and munge for them (Debian; elsewhere
# it says how, or run `make test COVIDNETX_TEST_CLUSTER=0` and they skip)
test: export COVIDNETX_TEST_CLUSTER ?= 1
test: setup
	$(PY) -m pytest tests -q -ra $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/covidnetx demo --out demo_out

# every CPU benchmark with its default small sizes, each printing its table (~19 minutes on 2 cores);
# on a GPU node: $(PY) benchmarks/gpu_check.py
bench: setup
	$(PY) benchmarks/pack.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/train.py
	$$($(PY) -c "from covidnetx.launch import mpirun_cmd; print(' '.join(mpirun_cmd(2)))") $(PY) benchmarks/allreduce.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/project.py
	$(PY) benchmarks/probe.py

clean:
	rm -rf demo_out study_out bench_out baseline_out build .pytest_cache
