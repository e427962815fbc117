# Two entry points (see README): `make demo` and `make test`; both install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
HC := $(VENV)/bin/hypercompile

.PHONY: install demo test lint bench toolchain jetson

install: $(VENV)/.installed toolchain

# Jetson builds link aarch64 host code with Debian's cross compiler; their CUDA 12 kernels come
# from NVRTC 12.6 (PyPI wheels in the dev/jetson extras); x86-cuda kernels need nvcc.
toolchain:
	@command -v aarch64-linux-gnu-g++ >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null; \
	  else echo "note: no aarch64-linux-gnu-g++; Jetson TVM builds need: sudo apt-get install g++-aarch64-linux-gnu"; fi; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build; the package itself pins no torch
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[build,dev]'
	touch $@

demo: install
	$(HC) build examples/continual_hypernet/model.py:make --out build/continual
	$(PY) examples/continual_hypernet/predict.py build/continual
	$(HC) inspect build/continual

jetson: install
	$(HC) build examples/morph_hypernet/model.py:make --target jetson-orin-nano --out build/orin
	$(HC) inspect build/orin

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check hypercompile tests examples benchmarks

bench: install
	$(PY) benchmarks/bench_hypernets.py
