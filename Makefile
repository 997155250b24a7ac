# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, export a CLIP and classify a few images
#   make test   create .venv, install, run the CPU test suite
# MODEL may be a Hugging Face hub id (needs network) or a local HF folder (offline).
# RANDOM_INIT=1 builds random weights from MODEL's config.json (no weights needed; predictions meaningless).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  ?= openai/clip-vit-base-patch32
SHARED ?= ../shared
RANDOM_INIT ?=
DEMO_PKG ?= build/demo-package
PYTEST_ARGS ?=

.PHONY: demo test test-full bench cpu-peak gpu-check lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build; an unpinned resolve could pull the multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) scripts/demo.py --model '$(MODEL)' --package '$(DEMO_PKG)' --shared '$(SHARED)' $(if $(RANDOM_INIT),--random-init)

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

# mypy over [tool.mypy] files; TensorRT is checked against tensorrt-stubs, repaired first (scripts/tensorrt_stubs.py).
lint: $(VENV)/.installed
	$(PY) scripts/tensorrt_stubs.py build/trt-stubs
	MYPYPATH=build/trt-stubs $(PY) -m mypy

clean:
	rm -rf build .pytest_cache
