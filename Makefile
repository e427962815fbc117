# Two entry points (see README): `make demo` and `make test`. Both install into $(VENV) only what
# they need; nothing outside it changes. System packages: only `make jetson`, which says first.
VENV ?= .venv
PY := $(VENV)/bin/python
HC := $(VENV)/bin/hypercompile
# the package pins no torch: install the build that fits the machine first (here: the CPU one)
TORCH ?= torch==2.13.0

.PHONY: install demo test lint bench jetson

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# building: torch, then the build extra (onnx, onnxscript)
$(VENV)/.build: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[build]'
	touch $@

# the tests: every extra they exercise (adapters' libraries, TVM, NVRTC 12.6, pytest, ruff)
$(VENV)/.dev: pyproject.toml $(VENV)/.build
	$(PY) -m pip install -q -e '.[build,dev]'
	touch $@

install: $(VENV)/.dev

demo: $(VENV)/.build
	$(HC) build examples/continual_hypernet/model.py:make --out build/continual
	$(HC) inspect build/continual
	$(PY) examples/continual_hypernet/predict.py build/continual
	$(PY) examples/continual_hypernet/gain.py build/continual
	@$(PY) -c "import numpy as np; np.save('build/x.npy', np.zeros((1, 1, 16, 16), np.float32))"
	@echo
	@echo "The CLI is $(HC) (or: source $(VENV)/bin/activate, then hypercompile -h). Try:"
	@echo "  $(HC) run build/continual --input x=build/x.npy --cond task=3"

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check hypercompile tests examples benchmarks

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_hypernets.py

# Jetson builds link aarch64 host code with Debian's cross compiler (a system package, so this
# target says what it installs and asks sudo for it); CUDA 12 kernels come from NVRTC 12.6 wheels.
jetson: $(VENV)/.dev
	@command -v aarch64-linux-gnu-g++ >/dev/null || { \
	  echo "make jetson installs the system package g++-aarch64-linux-gnu (apt-get):"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq g++-aarch64-linux-gnu; }
	$(HC) build examples/morph_hypernet/model.py:make --target jetson-orin-nano --out build/orin
	$(HC) inspect build/orin
