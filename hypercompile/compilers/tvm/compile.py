"""Apache TVM (Relax): each ONNX graph compiles once to a shared library whose weights stay
run-time arguments, so every variant of an architecture binds its own weights to one library."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...core import tensors as fmt
from ...core.targets import host_arch
from ...errors import BuildError
from ...runtime.runners.tvm import FACTORY as RUNNERS
from ...runtime.runners.tvm import import_tvm
from ..base import Artifact, CompileOptions, Compiler
from . import tuning
from .device import (
    FATBIN_MAGIC,
    cuda_images,
    cuda_release,
    elf_machine,
    export,
    toolchain_missing,
)
from .onnx_rewrite import lstm_to_cells


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


def artifact_info(data: bytes, exported: dict[str, Any]) -> dict[str, Any]:
    """What the library is, read off its bytes (its ELF machine and any GPU code), after what
    `device.export` said about how it was exported."""
    info: dict[str, Any] = {**exported, "elf": elf_machine(data)}
    fatbins = data.count(FATBIN_MAGIC)
    cubins = cuda_images(data)
    if fatbins:
        info["device_code"] = {"fatbins": fatbins}
    elif cubins:
        info["device_code"] = {"cubins": len(cubins), "elf_abi": sorted(set(cubins))}
    elif b'extern "C" __global__' in data:
        info["device_code"] = {"cuda_source": True}
    return info


class TvmCompiler(Compiler):
    name = "tvm"

    def available(self) -> str | None:
        return RUNNERS.available()  # the compiler is the same installed TVM

    def can_build(self, target: Any) -> str | None:
        return toolchain_missing(target)

    def compile_target(self, target: Any) -> Any:
        """The target with its TVM target in full: the tag expanded, `tvm_target` and
        `tvm_host` applied, the host CPU's `mcpu` for a local `llvm` target; a CUDA target
        that does not name its CUDA release gets the build machine's nvcc's (its GPU code's)."""
        spec = resolve_target(target)
        cuda = cuda_release(target) if spec.get("kind") == "cuda" else target.cuda
        return dataclasses.replace(target, tvm_target=spec, tvm_host={}, tvm_tag="", cuda=cuda)

    def compile(
        self,
        onnx: bytes,
        target: Any,
        *,
        graph_id: str,
        options: CompileOptions | None = None,
    ) -> Artifact:
        """Import the graph with the variant weights as parameters, bind the graph's own
        constants, compile for the target (CPU: `tuning`, tuned when `options.tune` asks) and
        export the library; a tuning database goes to `tvm/tuning/<graph id>/`."""
        import onnx as onnx_
        import tvm
        from onnx import numpy_helper
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        tune = options.tune if options is not None else None
        model = onnx_.load_model_from_string(onnx)
        _identifier_names(model.graph)
        lstm_to_cells(model)  # TVM's ONNX importer has no LSTM
        weights, constants = [], {}
        for i, t in enumerate(model.graph.initializer):
            if any(e.value == fmt.WEIGHT_STUB_LOCATION for e in t.external_data):
                dtype = onnx_.helper.tensor_dtype_to_np_dtype(t.data_type)
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
            executable, database = tuning.compile_module(mod, tvm_target, tune, graph_id)
        except BuildError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BuildError(f"TVM cannot compile graph {graph_id}: {first}") from None
        with tempfile.TemporaryDirectory(prefix="hc-tvm-") as tmp:
            out = Path(tmp) / f"{graph_id}.so"
            exported = export(executable, out, target)
            data = out.read_bytes()
        files = {f"{tuning.TUNING_DIR}/{graph_id}/{name}": blob for name, blob in database.items()}
        return Artifact(data=data, suffix=".so", info=artifact_info(data, exported), files=files)


COMPILER = TvmCompiler()
