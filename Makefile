# Two commands on a fresh clone: `make demo` (the main job on bundled data) and `make test`.
# Both create .venv on first use and install what they need into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0 and triton 3.6.0 install from local disk on the project machines; override
# TORCH_SPEC to reuse another build (e.g. TORCH_SPEC=torch on a machine with CUDA wheels).
TORCH_SPEC  ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0
# Video decoders (data.decoder): PyAV everywhere (it bundles FFmpeg); decord only where it has wheels and
# is fastest (x86-64 Linux); torchcodec where it loads (it needs FFmpeg's shared libraries and, from PyPI
# on Linux, a CUDA build of torch; elsewhere data.decoder=auto skips it).
DECODERS    := av torchcodec
ifeq ($(shell uname -s)-$(shell uname -m),Linux-x86_64)
DECODERS    += decord==0.6.0
endif
EXTRA_DEPS  := numpy pyyaml pytest pytest-benchmark pytest-xdist safetensors $(DECODERS) scikit-learn scikit-video pillow matplotlib tensorboard
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean-venv

$(STAMP): setup.py Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Keep a working torch if the venv already has one; otherwise install the pinned build.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	@$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/pip install -q "$(TRITON_SPEC)" || echo "triton not installed: kernels fall back to PyTorch"
	$(BIN)/pip install -q $(EXTRA_DEPS)
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vjepa-fast demo

# Test files are spread over TEST_WORKERS processes (pytest-xdist; a file stays on one worker, so
# module fixtures are built once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

bench: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks --benchmark-enable --benchmark-only

clean-venv:
	rm -rf $(VENV)
