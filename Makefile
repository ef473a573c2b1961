# Everyday targets. Run them inside a virtualenv; PYTHON and TORCH_SPEC can be overridden
# (e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128" on a GPU machine).
PYTHON ?= python
TORCH_SPEC ?= torch==2.13.0

.PHONY: build-deps install install-test train test test-gpu gpu-check cuda-torch-build cuda-check emu-asan triton-aot bench bench-pytest lint package

# What the build itself needs (torch only when none is installed).
build-deps:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install $(TORCH_SPEC)
	$(PYTHON) -m pip install "setuptools>=77" wheel ninja numpy

install: build-deps
	$(PYTHON) -m pip install --no-build-isolation -e ".[train]"

# The test install also builds the CUDA emulator (relay_kernels._cuda_emu, backend cuda_emu), so
# the suite runs the CUDA kernels on the CPU; `make train` does not build it. One build: it does
# not go through `install` first.
install-test: build-deps
	RELAY_KERNELS_CUDA_EMU=1 $(PYTHON) -m pip install --no-build-isolation -e ".[test,train,dev,kdiffusion]"
	$(PYTHON) -m pip install --no-deps k-diffusion==0.1.1.post1  # test oracle; its small deps are in the kdiffusion extra
	$(PYTHON) -m pip install --no-deps torch-fidelity==0.4.0  # test oracle for the FID Inception (its package __init__ needs torchvision: tests load the module alone)

# The main job: trains both relay stages on the built-in dataset, ends with runs/relaydiff/grid.png.
train: install
	$(PYTHON) -m relaydiff.train

# Builds, checks that every CUDA source compiles, runs the suite (Triton under its CPU
# interpreter when there is no GPU; GPU tests are reported as skipped).
test: install-test cuda-check
	$(PYTHON) -m pytest tests

cuda-check:
	@if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then \
		bash csrc/cuda/check_compile.sh; \
	else echo "cuda-check: nvcc not found, CUDA sources not compiled"; fi

# The CUDA kernels under AddressSanitizer + UBSan in the CPU emulator (standalone, no torch).
emu-asan:
	bash .ci/cuda_emu.sh

# Every Triton kernel over every configuration its launchers and autotuners can pick, compiled for
# sm_80 and sm_90 without a GPU (about 25 min of one core per arch). Run it whenever the Triton
# kernels change and update docs/TRITON_AOT.md; CI runs a subset on three Triton versions
# (.ci/triton_aot.sh).
triton-aot:
	mkdir -p runs && env -u TRITON_INTERPRET $(PYTHON) -m relay_kernels.triton.aot --arch 80,90 --markdown --json runs/triton_aot.json

test-gpu:
	$(PYTHON) -m pytest tests -m "gpu or triton" -rs

# The prepared check for a lent GPU machine (its own torch, no network): build, GPU tests, the
# sanitizers, CUDA-graph replay, the benchmark table, in under 8 minutes; logs under
# GPU_CHECK_OUT (default $$OUT, else ./gpu-check-out). Without a GPU it says so and fails at once.
GPU_CHECK_OUT ?=
gpu-check:
	PYTHON="$(PYTHON)" bash tools/gpu_check.sh $(GPU_CHECK_OUT)

# The sdist and a wheel from a clean copy, each installed in a fresh venv with the pinned CPU torch
# and checked from outside the tree, as CI does (.ci/package.sh; two builds of the C++: 16-19 min measured on
# the shared 2-core VM under load 4-10, 2026-12-07; one build took 2 min there at low load).
package:
	TORCH_SPEC="$(TORCH_SPEC)" bash .ci/package.sh

# What CI runs for the CUDA extension against a CUDA torch (2.14.1) without a GPU (~20 min, 2 cores).
cuda-torch-build:
	bash .ci/cuda_torch_build.sh

bench:
	$(PYTHON) -m benchmarks.table

bench-pytest:
	$(PYTHON) -m pytest benchmarks/ --benchmark-only

lint:
	ruff check relay_kernels relaydiff benchmarks tests
