"""Apache TVM (Relax): each ONNX graph compiles once to a shared library whose weights stay
run-time arguments, so every variant of an architecture binds its own weights to one library."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core import tensors as fmt
from ..core.targets import host_arch
from ..errors import BackendError, BuildError
from . import tvm_tuning
from .base import Backend, Binding
from .onnx_rewrite import lstm_to_cells
from .tvm_device import FATBIN_MAGIC, elf_machine, export, toolchain_missing


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


def resolve_target(target: Any) -> dict[str, Any]:
    """The target's TVM target as a JSON dict; an `llvm` target for this machine without an
    `mcpu` gets the host CPU's (TVM 0.24+ refuses `llvm -mcpu=...` strings)."""
    spec: dict[str, Any] = {}
    tag = getattr(target, "tvm_tag", "")
    if tag:  # expand the tag into its full JSON form, recorded as compiled for
        import json

        tvm = import_tvm()
        try:
            spec = json.loads(str(tvm.target.Target(tag)))
        except Exception:
            raise BuildError(f"target {target.name}: unknown TVM target tag {tag!r}") from None
        for key in ("tag", "keys"):
            spec.pop(key, None)
            if isinstance(spec.get("host"), dict):
                spec["host"].pop(key, None)
    spec.update(getattr(target, "tvm_target", None) or {})
    spec.setdefault("kind", "llvm")
    here = host_arch()
    local = getattr(target, "arch", here) == here
    if spec.get("kind") == "llvm" and "mcpu" not in spec and "mtriple" not in spec and local:
        tvm = import_tvm()
        spec["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    if getattr(target, "tvm_host", None):
        spec["host"] = dict(target.tvm_host)
    return spec


def _identifier_names(graph: Any) -> None:
    """Rename inputs and initializers that are not C identifiers (`0.weight`): TVM's CUDA code
    generator names kernel parameters after them. Arguments stay positional, so nothing else
    changes."""
    import re

    taken = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    for name in sorted(taken):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            new = "p_" + re.sub(r"\W", "_", name)
            while new in taken or new in rename.values():
                new += "_"
            rename[name] = new
    if not rename:
        return
    for v in graph.input:
        v.name = rename.get(v.name, v.name)
    for t in graph.initializer:
        t.name = rename.get(t.name, t.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for attr in node.attribute:  # subgraphs (If/Loop bodies) read outer names too
            for sub in [attr.g, *attr.graphs]:
                for n in sub.node:
                    for i, name in enumerate(n.input):
                        if name in rename:
                            n.input[i] = rename[name]


def _load_cuda_runtime(tvm: Any) -> str | None:
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


def _device_kind(target: Any) -> str:
    spec = getattr(target, "tvm_target", None) or {}
    if not spec and getattr(target, "tvm_tag", ""):
        spec = resolve_target(target)
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


class TvmRunner:
    def __init__(
        self,
        fn: Any,
        input_names: list[str],
        weights: list[Any],
        keepalive: Any,
        shapes: list[tuple[int, ...] | None],
        device: Any,
    ):
        self._fn, self._inputs, self._weights = fn, input_names, weights
        self._keepalive, self._shapes, self._dev = keepalive, shapes, device

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        tvm = sys.modules["tvm"]
        if (
            self._dev.dlpack_device_type() == 1
        ):  # CPU: share memory with numpy instead of copying twice
            args = [tvm.runtime.from_dlpack(_aligned_copy(feeds[n])) for n in self._inputs]
        else:
            args = [
                tvm.runtime.tensor(np.require(feeds[n], requirements="C"), device=self._dev)
                for n in self._inputs
            ]
        out = self._fn(*args, *self._weights)
        outs = [out] if hasattr(out, "numpy") else list(out)
        arrays = [_to_numpy(o) for o in outs]
        # TVM's ONNX import turns some 0-d results into shape (1,): keep the graph's shapes
        return [
            a.reshape(s) if s is not None and a.shape != s and a.size == int(np.prod(s)) else a
            for a, s in zip(arrays, self._shapes)
        ]


class TvmBackend(Backend):
    name = "tvm"

    def __init__(self) -> None:
        self._exported: dict[str, dict[str, Any]] = {}  # library path -> how it was exported

    def available(self) -> str | None:
        try:
            import_tvm()
        except ImportError:
            return "Apache TVM is not installed (pip install 'hypercompile[tvm]')"
        return None

    def compile(
        self,
        graph_path: Path,
        bundle_dir: Path,
        graph_id: str,
        target: Any,
        tune: tvm_tuning.TuneRequest | None = None,
    ) -> str:
        """Import the graph with the variant weights as parameters, bind the graph's own
        constants, compile for the target (CPU: `tvm_tuning`, tuned when `tune` asks) and export
        the library into `tvm/`."""
        import onnx
        import tvm
        from onnx import numpy_helper
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        model = onnx.load(str(graph_path), load_external_data=False)
        _identifier_names(model.graph)
        lstm_to_cells(model)  # TVM's ONNX importer has no LSTM
        weights, constants = [], {}
        for i, t in enumerate(model.graph.initializer):
            if any(e.value == fmt.WEIGHT_STUB_LOCATION for e in t.external_data):
                dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
                stub = numpy_helper.from_array(np.zeros(list(t.dims), dtype), t.name)
                model.graph.initializer[i].CopyFrom(stub)
                weights.append(t.name)
            else:
                constants[t.name] = numpy_helper.to_array(t)
        try:
            mod = from_onnx(model, keep_params_in_input=True)
            mod, _ = relax.frontend.detach_params(mod)
            names = [str(p.name) for p in mod["main"].params]
            bind = {n: tvm.runtime.tensor(constants[n]) for n in names if n in constants}
            if bind:
                mod = relax.transform.BindParams("main", bind)(mod)
            names = [str(p.name) for p in mod["main"].params]
            inputs = [vi.name for vi in model.graph.input]
            if names != inputs + weights:
                raise BuildError(f"TVM import of {graph_id}: unexpected argument order {names}")
            tvm_target = tvm.target.Target(resolve_target(target))
            tuning_dir = bundle_dir / tvm_tuning.TUNING_DIR / graph_id
            executable, _ = tvm_tuning.compile_module(mod, tvm_target, tuning_dir, tune)
        except BuildError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BuildError(f"TVM cannot compile graph {graph_id}: {first}") from None
        out = bundle_dir / "tvm" / f"{graph_id}.so"
        out.parent.mkdir(exist_ok=True)
        self._exported[str(out)] = export(executable, out, target)
        return out.relative_to(bundle_dir).as_posix()

    def artifact_info(self, path: Path) -> dict[str, Any]:
        """What the library is, read off the file itself: its ELF machine and any GPU code."""
        data = path.read_bytes()
        info: dict[str, Any] = {**self._exported.pop(str(path), {}), "elf": elf_machine(data)}
        fatbins = data.count(FATBIN_MAGIC)
        if fatbins:
            info["device_code"] = {"fatbins": fatbins}
        elif b'extern "C" __global__' in data:
            info["device_code"] = {"cuda_source": True}
        return info

    def can_build(self, target: Any) -> str | None:
        return toolchain_missing(target)

    def runs_here(self, target: Any) -> str | None:
        """None when this machine can run the target's TVM libraries, else why not."""
        if getattr(target, "arch", host_arch()) != host_arch():
            return f"this machine is {host_arch()}"
        if _device_kind(target) == "cuda":
            tvm = import_tvm()
            reason = _load_cuda_runtime(tvm)
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
        dev = tvm.cuda(0) if _device_kind(binding.target) == "cuda" else tvm.cpu()

        # load the verified bytes, not the path: the file cannot change after its hash check
        fd, path = tempfile.mkstemp(suffix=".so")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(binding.artifact)
            lib = tvm.runtime.load_module(path)
        except Exception as e:
            raise BackendError(f"TVM cannot load the library: {e}".splitlines()[0]) from None
        finally:
            os.unlink(path)
        vm = tvm.runtime.vm.VirtualMachine(lib, dev)
        bound = [
            tvm.runtime.tensor(np.require(w, requirements="C"), device=dev)
            for w in binding.weights.values()
        ]
        # weight-only work (transposes, folded batch norm) once per weight set, not per call
        bound, _ = tvm_tuning.transform_weights(vm, bound)
        shapes = [
            tuple(o["shape"]) if all(isinstance(d, int) for d in o["shape"]) else None
            for o in binding.outputs
        ]
        inputs = [i["name"] for i in binding.inputs]
        return TvmRunner(vm["main"], inputs, bound, (vm, lib), shapes, dev)


BACKEND = TvmBackend()
