"""Apache TVM (Relax): a graph's shared library, built once per architecture, with the variant's
weights bound as run-time arguments. Needs TVM's runtime only (never its compiler, torch or
onnx)."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...core.targets import host_arch
from ...errors import BackendError
from .base import Binding, RunnerFactory

# the function TVM's LiftTransformParams makes of the weight-only work of `main` (transposes,
# folded batch norm): the runner calls it once per weight set, not per call
TRANSFORM_PARAMS = "main_transform_params"
# one transform for `main` and its batch-specialized copy (see compilers/tvm/tuning.py)
SHARED_TRANSFORM = "transform_params"
# a graph with a dynamic batch also has `main` specialized at this batch, with static shapes
# (its loop nests get static schedules and can be tuned): calls at that batch use it
STATIC_BATCH = 1
STATIC_MAIN = f"main_batch{STATIC_BATCH}"


def import_tvm() -> Any:
    """Import TVM without torch: tvm_ffi imports torch eagerly when it is installed, and the
    runtime must stay torch-free (torch stays importable for whoever asks for it later)."""
    if "tvm.runtime.vm" in sys.modules:
        return sys.modules["tvm"]
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        import tvm
        from tvm.runtime import vm  # noqa: F401  (the runtime needs no compiler)
    finally:
        if block and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def transform_weights(vm: Any, weights: list[Any]) -> tuple[list[Any], float]:
    """The weights `main` takes, from the variant's weights: `main_transform_params` applied
    once (transposes, folded batch norm), or the weights themselves for a library without one
    (built before the transform was lifted, or for another target). Returns them with the
    seconds it took."""
    names = (SHARED_TRANSFORM, TRANSFORM_PARAMS)
    name = next((n for n in names if vm.module.implements_function(n)), None)
    if name is None:
        return weights, 0.0
    t = time.perf_counter()
    out = list(vm[name](weights))
    return out, time.perf_counter() - t


def load_cuda_runtime(tvm: Any) -> str | None:
    """Load TVM's CUDA runtime plugin unless TVM did (a runtime-only TVM does not); None when
    it is ready, else why not."""
    import ctypes

    import tvm_ffi

    if tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True):
        return None
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        return str(e).splitlines()[0] if str(e) else "libtvm_runtime_cuda.so does not load"
    return None


def cuda_driver_version() -> int | None:
    """The CUDA version this machine's driver supports (12060 for 12.6), or None without one."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value


def cuda_driver_refuses(release: str) -> str | None:
    """Why this machine's CUDA driver cannot load GPU code of CUDA `release` (its ELF ABI is
    the toolkit major's: a CUDA 13 image needs a CUDA 13 driver), else None."""
    if not release:
        return None
    have = cuda_driver_version()
    if have is None:
        return f"its GPU code is CUDA {release} and this machine has no CUDA driver (libcuda)"
    need = int(release.split(".")[0])
    if have // 1000 < need:
        return (
            f"its GPU code is CUDA {release} and this machine's driver supports CUDA "
            f"{have // 1000}.{have % 1000 // 10} only: update the driver (JetPack), or build for a "
            "target whose `cuda` matches it"
        )
    return None


def device_kind(target: Any) -> str:
    """The TVM device kind a target's libraries run on (`llvm`: the CPU, `cuda`, ...). A built
    bundle records its full TVM target; a bare tag is expanded where TVM can."""
    spec = getattr(target, "tvm_target", None) or {}
    if not spec and getattr(target, "tvm_tag", ""):
        try:
            return str(import_tvm().target.Target(target.tvm_tag).kind.name)
        except Exception:  # noqa: BLE001  # a runtime-only TVM, or an unknown tag
            return "llvm"
    return str(spec.get("kind", "llvm"))


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A private copy of `a` on a 64-byte boundary, which TVM requires to borrow memory."""
    buf = np.empty(a.nbytes + 64, np.uint8)
    start = (-buf.ctypes.data) % 64
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _to_numpy(t: Any) -> np.ndarray:
    """A CPU result without a copy (numpy keeps TVM's buffer alive), else copied to the host."""
    if t.device.dlpack_device_type() == 1:
        try:
            return np.from_dlpack(t)
        except (TypeError, BufferError, RuntimeError):
            pass
    return t.numpy()


# Libraries loaded in this process, by the sha256 of their bytes: a library is loaded (and
# mapped) once however often runners of it are made; TVM never unloads one
_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _load_library(tvm: Any, artifact: bytes) -> Any:
    key = hashlib.sha256(artifact).hexdigest()
    with _LIBS_LOCK:
        lib = _LIBS.get(key)
        if lib is not None:
            return lib
        # load the verified bytes, not the path: the file cannot change after its hash check
        fd, path = tempfile.mkstemp(suffix=".so")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(artifact)
            lib = tvm.runtime.load_module(path)
        except Exception as e:
            raise BackendError(f"TVM cannot load the library: {e}".splitlines()[0]) from None
        finally:
            os.unlink(path)
        _LIBS[key] = lib
        return lib


class TvmRunner:
    """A TVM library's `main` with one variant's weights bound (`fn(*inputs, *weights)`). A TVM
    virtual machine is not safe to call from several threads at once, so calls of one runner
    are serialized (TVM runs each call on its own thread pool)."""

    def __init__(
        self,
        fn: Any,
        input_names: list[str],
        weights: list[Any],
        keepalive: Any,
        shapes: list[tuple[int, ...] | None],
        device: Any,
    ):
        self.fn, self._inputs, self.weights = fn, input_names, weights
        self._keepalive, self._shapes, self._dev = keepalive, shapes, device
        self._lock = threading.Lock()
        self.static: Any = None  # `main` specialized at STATIC_BATCH, where the library has it
        # a program's blocks keep their outputs on the GPU between calls (see `run_resident`)
        self.resident = device.dlpack_device_type() != 1

    def _call(self, feeds: dict[str, Any]) -> list[Any]:
        tvm = sys.modules["tvm"]
        Tensor, cpu = tvm.runtime.Tensor, self._dev.dlpack_device_type() == 1
        args = [
            v  # an earlier block's result, already on the device
            if isinstance(v := feeds[n], Tensor)
            else tvm.runtime.from_dlpack(_aligned_copy(v))  # CPU: numpy's memory, one copy
            if cpu
            else tvm.runtime.tensor(np.require(v, requirements="C"), device=self._dev)
            for n in self._inputs
        ]
        fn = self.fn
        if self.static is not None and args and args[0].shape[0] == STATIC_BATCH:
            fn = self.static
        with self._lock:
            out = fn(*args, *self.weights)
        return [out] if hasattr(out, "numpy") else list(out)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [self._shaped(_to_numpy(o), s) for o, s in zip(self._call(feeds), self._shapes)]

    def run_resident(self, feeds: dict[str, Any]) -> list[Any]:
        """`run` with feeds that may be device tensors and outputs left on the device, except
        those whose shape TVM changed (copied to the host and reshaped, as `run` does)."""
        return [
            self._shaped(_to_numpy(o), s) if _reshaped(tuple(o.shape), s) else o
            for o, s in zip(self._call(feeds), self._shapes)
        ]

    @staticmethod
    def _shaped(a: np.ndarray, s: tuple[int, ...] | None) -> np.ndarray:
        return a.reshape(s) if _reshaped(a.shape, s) else a

    @staticmethod
    def host(v: Any) -> Any:
        """A value as the host reads it: a TVM tensor copied into a numpy array."""
        return _to_numpy(v) if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else v


def _reshaped(shape: tuple[int, ...], s: tuple[int, ...] | None) -> bool:
    """Whether a result of `shape` is the graph's `s` reshaped: TVM's ONNX import turns some
    0-d results into shape (1,), and the graph's shape is kept."""
    return s is not None and shape != s and int(np.prod(shape)) == int(np.prod(s))


class TvmRunners(RunnerFactory):
    name = "tvm"

    def available(self) -> str | None:
        try:
            import_tvm()
        except ImportError:
            return "Apache TVM is not installed (pip install 'hypercompile[tvm]')"
        return None

    def runs_here(self, target: Any) -> str | None:
        """None when this machine can run the target's TVM libraries, else why not."""
        if getattr(target, "arch", host_arch()) != host_arch():
            return f"this machine is {host_arch()}"
        if device_kind(target) == "cuda":
            why = cuda_driver_refuses(getattr(target, "cuda", ""))
            if why:
                return why
            tvm = import_tvm()
            reason = load_cuda_runtime(tvm)
            if reason:
                return f"TVM's CUDA runtime does not load here ({reason})"
            if not tvm.cuda(0).exist:
                return "this machine has no CUDA GPU visible to TVM"
        return None

    def load(self, binding: Binding) -> TvmRunner:
        tvm = import_tvm()

        reason = self.runs_here(binding.target)
        if reason:
            raise BackendError(f"TVM artifact cannot run here: {reason}")
        dev = tvm.cuda(0) if device_kind(binding.target) == "cuda" else tvm.cpu()

        lib = _load_library(tvm, binding.artifact)
        vm = tvm.runtime.vm.VirtualMachine(lib, dev)
        # each distinct tensor is copied to the device once and shared by every runner
        held = binding.bind(
            ("tvm", str(dev)),
            lambda w: tvm.runtime.tensor(np.require(w, requirements="C"), device=dev),
        )
        # weight-only work (transposes, folded batch norm) once per weight set, not per call
        bound, _ = transform_weights(vm, [h.value for h in held])
        shapes = [
            tuple(o["shape"]) if all(isinstance(d, int) for d in o["shape"]) else None
            for o in binding.outputs
        ]
        inputs = [i["name"] for i in binding.inputs]
        runner = TvmRunner(vm["main"], inputs, bound, (vm, lib, held), shapes, dev)
        if vm.module.implements_function(STATIC_MAIN):
            runner.static = vm[STATIC_MAIN]
        return runner


FACTORY = TvmRunners()
