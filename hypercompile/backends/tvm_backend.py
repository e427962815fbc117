"""Apache TVM (Relax): each ONNX graph compiles once to a shared library whose weights stay
run-time arguments, so every variant of an architecture binds its own weights to one library."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import format as fmt
from ..errors import BackendError, BuildError
from ..targets import host_arch
from . import tvm_tuning
from .base import Backend, Binding


def import_tvm() -> Any:
    """Import TVM without torch: tvm_ffi imports torch eagerly when it is installed, and the
    runtime must stay torch-free (torch stays importable for whoever asks for it later)."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
    try:
        import tvm
        from tvm import relax  # noqa: F401
    finally:
        if block and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def resolve_target(target: Any) -> dict[str, Any]:
    """The target's TVM target as a JSON dict; an `llvm` target for this machine without an
    `mcpu` gets the host CPU's (TVM 0.24+ refuses `llvm -mcpu=...` strings)."""
    spec = dict(getattr(target, "tvm_target", None) or {"kind": "llvm"})
    here = host_arch()
    local = getattr(target, "arch", here) == here
    if spec.get("kind") == "llvm" and "mcpu" not in spec and "mtriple" not in spec and local:
        tvm = import_tvm()
        spec["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    if getattr(target, "tvm_host", None):
        spec["host"] = dict(target.tvm_host)
    return spec


class TvmRunner:
    def __init__(
        self,
        fn: Any,
        input_names: list[str],
        weights: list[Any],
        keepalive: Any,
        shapes: list[tuple[int, ...] | None],
    ):
        self._fn, self._inputs, self._weights = fn, input_names, weights
        self._keepalive, self._shapes = keepalive, shapes

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [_tensor(feeds[n]) for n in self._inputs]
        out = self._fn(*args, *self._weights)
        outs = [out] if hasattr(out, "__dlpack__") else list(out)
        arrays = [np.from_dlpack(o).copy() for o in outs]
        # TVM's ONNX import turns some 0-d results into shape (1,): keep the graph's shapes
        return [
            a.reshape(s) if s is not None and a.shape != s and a.size == int(np.prod(s)) else a
            for a, s in zip(arrays, self._shapes)
        ]


def _tensor(a: np.ndarray) -> Any:
    """A TVM tensor over `a` without a copy when it is C-contiguous and 64-byte aligned (what
    TVM's generated code assumes), else over an aligned copy: `tvm.runtime.tensor` costs ~25 us
    a call, which dominated small models."""
    tvm = sys.modules["tvm"]
    if not (a.flags.c_contiguous and a.ctypes.data % 64 == 0):
        raw = np.empty(a.nbytes + 64, np.uint8)
        start = -raw.ctypes.data % 64
        b = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
        b[...] = a
        a = b
    return tvm.runtime.from_dlpack(a)


class TvmBackend(Backend):
    name = "tvm"

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
        executable.export_library(str(out))
        return out.relative_to(bundle_dir).as_posix()

    def load(self, binding: Binding) -> TvmRunner:
        tvm = import_tvm()
        from tvm import relax

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
        vm = relax.VirtualMachine(lib, tvm.cpu())
        bound = [
            tvm.runtime.tensor(np.require(w, requirements="C")) for w in binding.weights.values()
        ]
        # weight-only work (transposes, folded batch norm) once per weight set, not per call
        bound, _ = tvm_tuning.transform_weights(vm, bound)
        shapes = [
            tuple(o["shape"]) if all(isinstance(d, int) for d in o["shape"]) else None
            for o in binding.outputs
        ]
        inputs = [i["name"] for i in binding.inputs]
        return TvmRunner(vm["main"], inputs, bound, (vm, lib), shapes)


BACKEND = TvmBackend()
