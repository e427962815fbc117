"""Export one static target to an ONNX graph whose weights are stubs, bound per variant later."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import tensors as fmt
from ..errors import BuildError
from .materialize import flatten_outputs

OPSET = 18


@dataclass(frozen=True)
class GraphInfo:
    """What the manifest records of an exported graph."""

    weights: list[str]  # initializer names bound per variant (state_dict keys)
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dynamic_batch: bool


def input_names(module: torch.nn.Module, n: int) -> list[str]:
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]


@contextlib.contextmanager
def quiet():
    """The exporter prints progress and warnings; keep the build's output readable."""
    buf = io.StringIO()
    prefixes = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith(prefixes)]
    loggers = [logging.getLogger(n) for n in (*prefixes, *names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buf),
            contextlib.redirect_stderr(buf),
        ):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _dims(value_info: Any, batch_symbol: str | None) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.dim_param and d.dim_param == batch_symbol:
            dims.append("batch")
        else:
            dims.append(d.dim_param or None)
    return dims


def _torch_export(module, inputs, names, out_names, dynamic: bool):
    dyn = tuple({0: torch.export.Dim.DYNAMIC} if x.dim() else {} for x in inputs)
    with quiet():
        program = torch.onnx.export(
            module,
            inputs,
            dynamo=True,
            input_names=names,
            output_names=out_names,
            dynamic_shapes=dyn if dynamic else None,
            optimize=False,  # the optimizer folds weights into new constants; ORT/TVM fold later
            opset_version=OPSET,
            verbose=False,
        )
    return program.model_proto


def export_graph(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, label: str
) -> GraphInfo:
    """Export `module` on `inputs` to `path`. Per-variant tensors (state_dict entries used by the
    graph) become external-data stubs; batch is dynamic when the model allows it."""
    import onnx

    names = input_names(module, len(inputs))
    with torch.no_grad():
        out_names, outs = flatten_outputs(module(*inputs))
    proto, errors = None, []
    for dynamic in (True, False):
        try:
            proto = _torch_export(module, inputs, names, out_names, dynamic)
            break
        except Exception as e:  # the exporter raises many types; keep the first line
            errors.append(first_line(e))
    if proto is None:
        raise BuildError(f"variant {label}: torch.onnx.export failed: {errors[-1]}")
    graph = proto.graph
    if [vi.name for vi in graph.input] != names:
        got = ", ".join(vi.name for vi in graph.input)
        raise BuildError(
            f"variant {label}: exported graph inputs ({got}) differ from forward's "
            f"({', '.join(names)}); an unused input?"
        )
    batch_symbol = None
    if inputs and inputs[0].dim():
        d0 = graph.input[0].type.tensor_type.shape.dim[0]
        batch_symbol = d0.dim_param or None

    weights = stub_weights(proto, module.state_dict())
    proto = simplify(proto, weights)
    onnx.save(proto, str(path))

    inputs_spec = [
        {"name": vi.name, "dtype": str(np.dtype(_np_dtype(x))), "shape": _dims(vi, batch_symbol)}
        for vi, x in zip(graph.input, inputs)
    ]
    outputs_spec = [
        {"name": vi.name, "dtype": str(np.dtype(_np_dtype(o))), "shape": _dims(vi, batch_symbol)}
        for vi, o in zip(graph.output, outs)
    ]
    return GraphInfo(weights, inputs_spec, outputs_spec, batch_symbol is not None)


def stub_weights(proto: Any, state: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Turn the graph initializers that are state_dict tensors (named `prefix` + key) into
    external-data stubs named by key, bound per variant at load; returns their names. Other
    initializers are graph constants, the same for every variant of the architecture."""
    from onnx import TensorProto

    weights = []
    for t in proto.graph.initializer:
        name = t.name[len(prefix) :] if prefix and t.name.startswith(prefix) else t.name
        if name not in state:
            continue
        nbytes = state[name].numel() * state[name].element_size()
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            t.ClearField(f)
        del t.external_data[:]
        t.data_location = TensorProto.EXTERNAL
        for k, v in (
            ("location", fmt.WEIGHT_STUB_LOCATION),
            ("offset", "0"),
            ("length", str(nbytes)),
        ):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        if name != t.name:
            for node in proto.graph.node:
                node.input[:] = [name if i == t.name else i for i in node.input]
            t.name = name
        weights.append(name)
    return weights


def simplify(proto: Any, weights: list[str]) -> Any:
    """Run the ONNX optimizer with the per-variant weights as graph inputs, so it removes the
    exporter's shape plumbing (Shape/Expand/CastLike around batch norm) without folding any
    weight into a new constant; then turn the weights back into stubs. ONNX Runtime fuses
    conv + batch norm + activation at load, once the real weights are bound."""
    import onnxscript.optimizer
    from onnx import helper

    graph = proto.graph
    stubs = {t.name: t for t in graph.initializer if t.name in set(weights)}
    keep = [t for t in graph.initializer if t.name not in stubs]
    n_inputs = len(graph.input)
    for name in weights:
        t = stubs[name]
        graph.input.append(helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    out = onnxscript.optimizer.optimize(proto)
    graph = out.graph
    del graph.input[n_inputs:]
    graph.initializer.extend(stubs[name] for name in weights)
    return out


def first_line(e: BaseException) -> str:
    """A readable one-line cause: the innermost exception's first line, without ANSI colour."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _np_dtype(t: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=t.dtype).numpy().dtype
