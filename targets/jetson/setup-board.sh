#!/usr/bin/env bash
# Run ON a JetPack 6 board (Jetson Orin; L4T r36, CUDA 12.x, Python 3.10): builds TVM's runtime
# only (libtvm_runtime + its CUDA plugin) against the board's CUDA and installs the hypercompile
# runtime, so that `hc.load(bundle).run(...)` runs the bundle's TVM libraries and ONNX graphs.
#
#   bash setup-board.sh [PREFIX]       # PREFIX: where the venv and TVM go (default ~/hypercompile)
#
# Not run by this project's CI (it has no board): see README "Deploying to a Jetson".
set -euo pipefail

PREFIX=${1:-$HOME/hypercompile}
TVM_VERSION=${TVM_VERSION:-v0.27.0}        # the apache-tvm release the bundles were built with
HC_SOURCE=${HC_SOURCE:-hypercompile}       # a wheel or a checkout of this repository
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

[ "$(uname -m)" = aarch64 ] || { echo "run this on the Jetson (aarch64), not $(uname -m)" >&2; exit 1; }
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no CUDA toolkit at $CUDA_HOME (JetPack's nvidia-jetpack package)" >&2; exit 1; }
cuda=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
case "$cuda" in 12.*) ;; *) echo "CUDA $cuda here; these bundles carry CUDA 12 code (JetPack 6)" >&2; exit 1 ;; esac

sudo apt-get install -y --no-install-recommends git cmake ninja-build python3-venv python3-dev

mkdir -p "$PREFIX"
python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip
# the runtime: numpy, onnxruntime, click, rich; never torch
"$PREFIX/venv/bin/pip" install -q "$HC_SOURCE"

# TVM's runtime only, against this board's CUDA (the PyPI wheel's CUDA plugin links CUDA 13)
if [ ! -d "$PREFIX/tvm" ]; then
  git clone --depth 1 --branch "$TVM_VERSION" --recursive https://github.com/apache/tvm "$PREFIX/tvm"
fi
cmake -S "$PREFIX/tvm" -B "$PREFIX/tvm/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DUSE_CUDA="$CUDA_HOME" -DUSE_LLVM=OFF -DUSE_LIBBACKTRACE=OFF \
  -DUSE_CUDNN=OFF -DUSE_CUBLAS=OFF
cmake --build "$PREFIX/tvm/build" --target tvm_runtime -j "$(nproc)"
"$PREFIX/venv/bin/pip" install -q "$PREFIX/tvm/3rdparty/tvm-ffi" "$PREFIX/tvm/python"

cat > "$PREFIX/env.sh" <<ENV
# source this before running bundles
export TVM_LIBRARY_PATH="$PREFIX/tvm/build"
export TVM_USE_RUNTIME_LIB=1
export PATH="$PREFIX/venv/bin:\$PATH"
ENV
. "$PREFIX/env.sh"
python - <<'PY'
import hypercompile.runtime.runners.tvm as t
print("CUDA driver supports", t.cuda_driver_version())
PY
echo "done: source $PREFIX/env.sh, then: hypercompile run BUNDLE --input x=x.npy --backend tvm"
