# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, export a CLIP and classify a few images
#   make test   create .venv, install, run the CPU test suite
# MODEL may be a Hugging Face hub id (needs network) or a local HF folder (offline).
# RANDOM_INIT=1 builds random weights from MODEL's config.json (no weights needed; predictions meaningless).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   ?= requirements/dev.lock
STUBS  := requirements/stubs.lock
# The extras that make up `dev` (pyproject: dev = ["clip-rt[a,b,...]"]), named one by one for pip-compile, which cannot
# lock a self-referencing extra. Read from pyproject when `make lock` runs (recursive `=`: not on every make call).
LOCK_EXTRAS = $(shell $(PYTHON) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['dev'][0]; print(d[d.index('[') + 1:d.index(']')].replace(',', ' '))")
MODEL  ?= openai/clip-vit-base-patch32
SHARED ?= ../shared
RANDOM_INIT ?=
DEMO_PKG ?= build/demo-package
PYTEST_ARGS ?=

.PHONY: demo test test-full test-latest lock bench cpu-peak gpu-check lint clean

# Exactly the versions in $(LOCK), every file checked against its sha256 (--require-hashes), then clip-rt itself
# (editable, no dependency resolution), then a check that the venv holds the lock and nothing else. A venv left
# from an older lock is rebuilt from scratch rather than patched.
$(VENV)/.installed: $(LOCK) $(STUBS) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK) -r $(STUBS)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) scripts/check_lock.py $(LOCK) $(STUBS)
	touch $@

# Refresh the lock from pyproject's ranges: the newest compatible releases, within requirements/constraints.txt.
lock:
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q 'pip-tools>=7.4,<8'
	build/lock-venv/bin/pip-compile --quiet --upgrade $(LOCK_EXTRAS:%=--extra %) --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --constraint requirements/constraints.txt \
		--output-file $(LOCK) pyproject.toml

# The suite against the newest releases pyproject allows (no lock, no constraints): what a user's fresh
# `pip install 'clip-rt[dev]'` gets. Its own venv, so the locked one is untouched.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q -e '.[dev]'
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# The preflight runs with the system Python before the venv build: a hub MODEL without network is refused at once,
# with the offline command (make demo RANDOM_INIT=1 MODEL=$(SHARED)/models/clip-tokenizer). An up-to-date package
# in $(DEMO_PKG) is reused, not exported again.
DEMO_ARGS = --model '$(MODEL)' --package '$(DEMO_PKG)' --shared '$(SHARED)' $(if $(RANDOM_INIT),--random-init)
demo:
	$(PYTHON) scripts/demo.py --preflight $(DEMO_ARGS)
	$(MAKE) --no-print-directory $(VENV)/.installed
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything, the ViT-B/32-scale slow tier included (30-60 minutes on 2 cores; not timed as one run).
test-full: $(VENV)/.installed
	$(PY) -m pytest -m 'slow or not slow' $(PYTEST_ARGS)

# NVIDIA GPU machines: probe, run every check that can run, report to build/gpu-check (README, "GPU and Jetson").
# GPU_CHECK_ARGS=--offline uses $(PYTHON) as it is (no venv, no pip), as on machines without network.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) scripts/gpu-check --shared '$(SHARED)' $(GPU_CHECK_ARGS)

# Not part of `make test`: micro-benchmarks of the hot paths (see benchmarks/README.md).
bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks --benchmark-only $(PYTEST_ARGS)

# x86 only, needs a C compiler: fp32 FMA and int8 VNNI peak rates of this CPU, the ceilings docs/CPU_SPEED.md uses.
build/cpu_peak: benchmarks/cpu_peak.c
	mkdir -p build
	$(CC) -O2 -Wall -Wextra -pthread -o $@ $<

cpu-peak: build/cpu_peak
	build/cpu_peak

# mypy over [tool.mypy] files, then import-linter's contracts ([tool.importlinter]: no circles, layers) over the installed layout (export/ as clip_rt/export, copied to build/lint-tree); TensorRT is checked against tensorrt-stubs, repaired first (scripts/tensorrt_stubs.py).
lint: $(VENV)/.installed
	$(PY) scripts/tensorrt_stubs.py build/trt-stubs
	MYPYPATH=build/trt-stubs $(PY) -m mypy
	rm -rf build/lint-tree && mkdir -p build/lint-tree && cp -r clip_rt build/lint-tree/ && cp -r export build/lint-tree/clip_rt/export
	cd build/lint-tree && PYTHONPATH=. $(CURDIR)/$(VENV)/bin/lint-imports $(CURDIR)/pyproject.toml --no-cache

clean:
	rm -rf build .pytest_cache
