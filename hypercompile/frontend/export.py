"""Export one static target to an ONNX graph whose weights are stubs, bound per variant later."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import tensors as fmt
from ..errors import BuildError, UnsupportedModelError
from .clone import clone_module
from .materialize import flatten_outputs

OPSET = 18
# The exporters tried, in order: torch.export without and with dynamo's strict tracing (PyTorch
# prefers non-strict: it runs forward as Python), then the TorchScript exporter
EXPORTERS = ("torch.export", "torch.export-strict", "torchscript")
# A dynamic-batch graph whose batch of 3 is further than this from the model's (relative to the
# output's magnitude) is exported again with a fixed batch; wrong batch handling errs by O(1)
BATCH_CHECK_RTOL = 1e-3


@dataclass(frozen=True)
class GraphInfo:
    """What the manifest records of an exported graph."""

    weights: list[str]  # initializer names bound per variant (state_dict keys)
    inputs: list[dict[str, Any]]  # including the state inputs, last
    outputs: list[dict[str, Any]]  # including the state outputs, last
    dynamic_batch: bool
    exporter: str = EXPORTERS[0]
    fixed_batch_reason: str | None = None  # why batch is fixed, when it could have been dynamic
    state: list[dict[str, str]] = field(default_factory=list)  # key, input, output


def input_names(module: torch.nn.Module, n: int) -> list[str]:
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]


@contextlib.contextmanager
def quiet():
    """The exporter prints progress and warnings; keep the build's output readable. Exports
    inside share one table of ONNX translations (see `warm_exporter`)."""
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
            _shared_registry(),
        ):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@contextlib.contextmanager
def _quiet_fds():
    """Silence what native code writes to the process's stdout and stderr."""
    import os

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


_REGISTRIES: dict[int, Any] = {}


def warm_exporter() -> None:
    """Build torch.onnx's table of ONNX translations once per process (a third of a small
    graph's export time); processes forked afterwards inherit it."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:  # another torch: it builds its own each time
        return
    if 18 not in _REGISTRIES:
        with quiet():  # it warns of missing torchvision
            _REGISTRIES[18] = _registration.ONNXRegistry.from_torchlib(18)


@contextlib.contextmanager
def _shared_registry():
    """torch.onnx.export with the process's translation table instead of a new one per call
    (it only reads it: no custom translations are passed). Where torch.onnx's dynamo exporter
    has not been imported (`warm_exporter` does, before an export that uses it), nothing is
    patched: importing it costs onnxscript's import, which tracing does not need."""
    _registration = sys.modules.get("torch.onnx._internal.exporter._registration")
    if _registration is None:
        yield
        return
    cls = _registration.ONNXRegistry
    own = cls.__dict__["from_torchlib"]

    def from_torchlib(klass, opset_version=18):
        if opset_version not in _REGISTRIES:
            _REGISTRIES[opset_version] = own.__func__(klass, opset_version)
        return _REGISTRIES[opset_version]

    cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = own


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


class Positional(torch.nn.Module):
    """What is exported: `forward(*tensors)` calls the model positionally, so no input name can
    collide with a submodule's (`forward(self, img, meta)` beside `self.meta`). With
    `state_keys` the trailing inputs are the model's state before the call (set on the model for
    the call, then put back) and the trailing outputs its state after it: state kept between
    calls becomes explicit graph I/O."""

    PREFIX = "m."  # the model's tensors are named `m.<state_dict key>` in the exported graph

    def __init__(self, module: torch.nn.Module, state_keys: tuple[str, ...] = ()):
        super().__init__()
        self.m = module
        self.state_keys = tuple(state_keys)

    def forward(self, *args: torch.Tensor) -> Any:
        if not self.state_keys:
            return self.m(*args)
        n = len(args) - len(self.state_keys)
        with swapped(self.m, dict(zip(self.state_keys, args[n:]))) as now:
            out = self.m(*args[:n])
            after = tuple(now())
        return out, after


@contextlib.contextmanager
def swapped(module: torch.nn.Module, values: dict[str, torch.Tensor]):
    """Set the attributes `values` names (`path.attr`: a parameter, buffer or tensor attribute)
    to copies of its tensors for the duration; yields a function returning their current values
    in the same order. The originals are put back afterwards."""
    slots = []
    for key in values:
        path, _, attr = key.rpartition(".")
        owner = module.get_submodule(path) if path else module
        table = next((t for t in (owner._parameters, owner._buffers) if attr in t), owner.__dict__)
        slots.append((owner, table, attr, table.get(attr)))
    for (_, table, attr, _), value in zip(slots, values.values()):
        table[attr] = value.clone()
    try:
        yield lambda: [_slot_value(owner, attr) for owner, _, attr, _ in slots]
    finally:
        for _, table, attr, old in slots:
            table[attr] = old


def _slot_value(owner: torch.nn.Module, attr: str) -> torch.Tensor:
    """The attribute's value now: forward may have reassigned it (`self.h = ...`)."""
    value = getattr(owner, attr)
    if not isinstance(value, torch.Tensor):
        raise BuildError(f"state `{attr}` is no longer a tensor after forward")
    return value


def _torch_export(wrapper, inputs, names, out_names, dynamic: bool, strict: bool):
    """torch.export captures the program: it refuses what the inputs' values or a dynamic
    batch would change. The graph is then written by the TorchScript exporter, tracing the same
    Python on the same example (neither onnxscript nor torch.onnx's translation table is
    needed), kept when it answers like the model; else torch.onnx's translation of the captured
    program. Returns (graph, how it was made, whether a batch of 3 was checked)."""
    name = "torch.export-strict" if strict else "torch.export"
    dyn = tuple({0: torch.export.Dim.DYNAMIC} if x.dim() else {} for x in inputs)
    if dynamic and wrapper.state_keys:  # the state keeps its own shape
        dyn = dyn[: len(inputs) - len(wrapper.state_keys)] + ({},) * len(wrapper.state_keys)
    with quiet():
        ep = _capture(clone_module(wrapper), tuple(inputs), (dyn,) if dynamic else None, strict)
    traced = _traced_graph(wrapper, inputs, names, out_names, dynamic)
    if traced is not None:
        return traced, f"{name}+torchscript", True
    warm_exporter()
    with quiet():
        try:
            program = torch.onnx.export(
                ep,
                tuple(inputs),
                dynamo=True,
                input_names=names,
                output_names=out_names,
                optimize=False,  # the optimizer folds weights into constants; ORT/TVM fold later
                opset_version=OPSET,
                verbose=False,
            )
        except Exception as e:
            _note_node_source(e, ep)
            raise
    return program.model_proto, name, False


def _traced_graph(wrapper, inputs, names, out_names, dynamic: bool):
    """The TorchScript exporter's graph of a program torch.export captured, or None where it
    fails, names other inputs, or answers unlike the model (a batch of 3 for a dynamic batch,
    else the example)."""
    try:
        proto = _torchscript_export(clone_module(wrapper), inputs, names, out_names, dynamic)
    except Exception:  # noqa: BLE001  # torch.onnx's translation of the program follows
        return None
    if [vi.name for vi in proto.graph.input] != list(names):
        return None
    if _mismatch(proto, clone_module(wrapper), inputs, names, grow=dynamic):
        return None
    return proto


def _note_node_source(e: BaseException, ep: Any) -> None:
    """Translation errors name the failing node (`Error when translating node %name`); add the
    source lines torch.export recorded for it, so `user_frame` can name the user's line."""
    chain: BaseException | None = e
    while chain is not None:
        found = re.search(r"translating node %(\w+)", str(chain))
        if found:  # the name is the decomposed graph's: `bessel_j0` for `special_bessel_j0`
            name = found.group(1)
            nodes = [n for n in ep.graph_module.graph.nodes if n.meta.get("stack_trace")]
            for node in sorted(nodes, key=lambda n: n.name != name):
                if name == node.name or name in node.name:
                    e.add_note(node.meta["stack_trace"])
                    return
        chain = chain.__cause__ or chain.__context__


def _capture(wrapper, inputs, dynamic_shapes, strict: bool):
    """torch.export's program, captured the way torch.onnx.export captures it (its patches for
    batch 1 as a dynamic size, RNN decompositions and functions dynamo cannot trace), one
    strategy at a time so the manifest can say which worked."""
    try:
        from torch.onnx._internal.exporter import _capture_strategies as cs

        strategy = cs.TorchExportStrictStrategy if strict else cs.TorchExportNonStrictStrategy
    except (ImportError, AttributeError):  # another torch: its public export, plainly
        return torch.export.export(wrapper, inputs, dynamic_shapes=dynamic_shapes, strict=strict)
    result = strategy()(wrapper, inputs, None, dynamic_shapes)
    if result.exported_program is None:
        raise result.exception  # type: ignore[misc]
    return result.exported_program


# TorchScript's warnings for a tensor read as a Python value the trace then freezes; integers
# and lists (sizes, indices) are let through: the batch-of-3 and parity checks test them
_FROZEN = re.compile(r"Converting a tensor to a Python (boolean|float|complex|number)")


def _torchscript_export(wrapper, inputs, names, out_names, dynamic: bool):
    import onnx

    axes = {n: {0: "batch"} for n, x in zip(names, inputs) if x.dim()}
    if wrapper.state_keys:
        axes = {n: a for n, a in list(axes.items())[: len(inputs) - len(wrapper.state_keys)]}
    axes.update({n: {0: "batch"} for n in out_names[: len(out_names) - len(wrapper.state_keys)]})
    buf = io.BytesIO()
    with quiet(), _quiet_fds(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)  # (it prints from C++ too)
        torch.onnx.export(
            wrapper,
            tuple(inputs),
            buf,
            dynamo=False,
            input_names=names,
            output_names=out_names,
            opset_version=OPSET,
            dynamic_axes=axes if dynamic else None,
            do_constant_folding=False,  # folding would bake weights into new constants
            # else equal tensors (two fresh norms' weights) become one initializer: another
            # variant bound to this graph may not have them equal
            keep_initializers_as_inputs=True,
        )
    for w in caught:  # tracing freezes a tensor's value read as a Python bool or number
        if issubclass(w.category, torch.jit.TracerWarning) and _FROZEN.search(str(w.message)):
            raise UnsupportedModelError(
                f"{w.filename}:{w.lineno}: a tensor's value is read as a Python value (a branch "
                "or arithmetic on tensor data), which tracing would freeze to the example's"
            )
    proto = onnx.load_from_string(buf.getvalue())
    weights = {t.name for t in proto.graph.initializer}
    kept = [vi for vi in proto.graph.input if vi.name not in weights]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    return proto


def _export_once(exporter: str, wrapper, inputs, names, out_names, dynamic: bool):
    """(graph, how it was made, whether a batch of 3 was checked); `wrapper` is copied first:
    an attempt may leave the module changed."""
    if exporter == "torchscript":
        proto = _torchscript_export(clone_module(wrapper), inputs, names, out_names, dynamic)
        return proto, exporter, False
    strict = exporter == "torch.export-strict"
    return _torch_export(wrapper, inputs, names, out_names, dynamic, strict)


def _try_exporters(wrapper, inputs, names, out_names, label: str, batch: bool = True):
    """The first graph an exporter makes that answers like the model: (proto, exporter,
    dynamic batch, why not dynamic). A dynamic-batch graph must also answer a batch of 3 like
    the model, else the same exporter is asked for a fixed batch. Raises the first exporter's
    error (the one users expect) when all fail."""
    user = inputs[: len(inputs) - len(wrapper.state_keys)]
    batchable = batch and any(x.dim() for x in user)  # 0-d inputs (a hyperparameter) stay
    failures: list[tuple[str, BaseException]] = []
    for exporter in EXPORTERS:
        why_fixed = None if batchable else "no input has a batch dimension" if batch else None
        for dynamic in (True, False) if batchable else (False,):
            try:
                proto, how, checked = _export_once(
                    exporter, wrapper, inputs, names, out_names, dynamic
                )
            except Exception as e:  # the exporters raise many types
                failures.append((exporter, e))
                why_fixed = why_fixed or f"{exporter} refused a dynamic batch"
                continue
            if dynamic and not checked:
                why_fixed = _mismatch(proto, clone_module(wrapper), inputs, names, grow=True)
                if why_fixed:
                    continue
            return proto, how, dynamic, why_fixed
    raise _export_error(failures, label)


def _mismatch(proto, wrapper, inputs, names, grow: bool) -> str | None:
    """None when the graph answers like the model, else why not: on a batch of 3 grown from the
    example (`grow`: a dynamic-batch graph), else on the example itself."""
    from ..runtime.runners.onnxruntime import check_session

    n = len(inputs) - len(wrapper.state_keys)
    gen = torch.Generator().manual_seed(3)
    batch = [_grow(x, gen) if x.dim() and grow else x for x in inputs[:n]] + list(inputs[n:])
    what = "a batch of 3" if grow else "the example"
    try:
        with torch.no_grad():
            want = flatten_outputs(wrapper(*batch))[1]
        sess = check_session(proto.SerializeToString())
        got = sess.run(None, {k: x.numpy() for k, x in zip(names, batch)})
    except Exception as e:  # ONNX Runtime or the model itself refuses the input
        return f"{what} fails ({first_line(e)})"
    if len(got) != len(want):
        return f"the graph has {len(got)} outputs, the model {len(want)}"
    for g, w in zip(got, want):
        w = w.detach().numpy()
        if g.shape != w.shape or not _close(g, w):
            return f"the graph answers {what} differently"
    return None


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(w)):
        return False
    finite = np.isfinite(w)
    if not np.array_equal(g[~finite], w[~finite], equal_nan=True):
        return False
    scale = float(np.abs(w[finite]).max()) if finite.any() else 0.0
    err = float(np.abs(g[finite] - w[finite]).max()) if finite.any() else 0.0
    return err <= BATCH_CHECK_RTOL * max(scale, 1e-6)


def _grow(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A batch of 3 from a batch-1 example: the example, then perturbed copies (floats) or
    repeats (integers, booleans), so rows differ where they can."""
    rows = x.repeat(3, *([1] * (x.dim() - 1))) if x.shape[0] == 1 else torch.cat([x] * 3)
    if rows.is_floating_point():
        noise = torch.randn(rows.shape, generator=gen).to(rows.dtype)
        noise[: x.shape[0]] = 0
        rows = rows + noise * rows.abs().mean().clamp(min=1e-3)
    return rows


def _export_error(failures: list[tuple[str, BaseException]], label: str) -> BuildError:
    """One line: the innermost user (or library) source frame of the first failure, with its
    text, then each exporter's message in full."""
    where = ""
    for _, e in failures:
        where = user_frame(e)
        if where:
            break
    seen, parts = set(), []
    for exporter, e in failures:
        text = full_message(e)
        if text not in seen:
            seen.add(text)
            parts.append(f"{exporter}: {text}")
    variant = "" if label == "(single variant)" else f"variant {label}: "
    return BuildError(f"{where}{variant}export failed: " + " | ".join(parts))


_OWN = ("/torch/", "/onnx/", "/onnxscript/", "/onnxruntime/", "/hypercompile/", "/importlib/")


def user_frame(e: BaseException) -> str:
    """`file:line: `code`: ` of the innermost frame of the exception chain outside torch, the
    ONNX packages, hypercompile and the standard library; '' when none. Strict tracing reports
    the user's frames only in its message (`File "...", line N`), so those count too."""
    import linecache
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    best = None
    chain: BaseException | None = e
    while chain is not None:
        tb = chain.__traceback__
        while tb is not None:
            f = tb.tb_frame.f_code.co_filename
            if not any(o in f for o in _OWN) and not f.startswith(stdlib) and f[0] != "<":
                best = (f, tb.tb_lineno)
            tb = tb.tb_next
        text = "\n".join([str(chain), *getattr(chain, "__notes__", [])])
        for f, line in re.findall(r'File "([^"]+)", line (\d+)', text):
            if not any(o in f for o in _OWN) and not f.startswith(stdlib) and f[0] != "<":
                best = (f, int(line))
        chain = chain.__cause__ or chain.__context__
    if best is None:
        return ""
    code = linecache.getline(best[0], best[1]).strip()
    return f"{best[0]}:{best[1]}: " + (f"`{code}`: " if code else "")


def full_message(e: BaseException) -> str:
    """The innermost exception's whole message on one line, without ANSI colour or the
    exporter's advice boilerplate."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        if ln.startswith(("For more information", "For C++ stack trace", "Set TORCH_LOGS")):
            break
        keep.append(ln)
    return f"{type(e).__name__}: " + " ".join(keep)[:2000]


def export_graph(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    label: str,
    state_keys: tuple[str, ...] = (),
    batch: bool = True,
) -> GraphInfo:
    """Export `module` on `inputs` to `path` through the first exporter that works. Per-variant
    tensors (state_dict entries used by the graph) become external-data stubs; batch is dynamic
    when the model allows it and the graph answers a batch of 3 correctly. `state_keys`: the
    module's state kept between calls, carried as extra inputs and outputs (`state_in_<i>`,
    `state_out_<i>`) whose initial values come from the module. `batch=False` keeps every
    input's shape as given (a generator's inputs have no batch)."""
    import onnx

    wrapper = Positional(module, state_keys).eval()
    names = input_names(module, len(inputs))
    initial = [_current(module, k).detach().clone() for k in state_keys]
    with torch.no_grad():  # on a copy: what a call leaves behind must not shape the export
        out_names, outs = flatten_outputs(clone_module(module)(*[x.clone() for x in inputs]))
    state_in = [f"state_in_{i}" for i in range(len(state_keys))]
    state_out = [f"state_out_{i}" for i in range(len(state_keys))]
    all_inputs = tuple(inputs) + tuple(initial)
    proto, exporter, dynamic, why_fixed = _try_exporters(
        wrapper, all_inputs, names + state_in, out_names + state_out, label, batch
    )
    graph = proto.graph
    if [vi.name for vi in graph.input] != names + state_in:
        got = ", ".join(vi.name for vi in graph.input)
        raise BuildError(
            f"variant {label}: exported graph inputs ({got}) differ from forward's "
            f"({', '.join(names + state_in)}); an unused input?"
        )
    batch_symbol = None
    if dynamic:
        first = next(vi for vi, x in zip(graph.input, all_inputs) if x.dim())
        batch_symbol = first.type.tensor_type.shape.dim[0].dim_param or None

    weights = stub_weights(proto, module.state_dict(), prefix=Positional.PREFIX)
    if not exporter.endswith("torchscript"):  # tracing writes no such plumbing
        proto = simplify(proto, weights)
    onnx.save(proto, str(path))

    spec = lambda vi, t: {  # noqa: E731
        "name": vi.name,
        "dtype": str(np.dtype(_np_dtype(t))),
        "shape": _dims(vi, batch_symbol),
    }
    return GraphInfo(
        weights,
        [spec(vi, x) for vi, x in zip(graph.input, all_inputs)],
        [spec(vi, o) for vi, o in zip(graph.output, list(outs) + initial)],
        batch_symbol is not None,
        exporter=exporter,
        fixed_batch_reason=None if batch_symbol else why_fixed,
        state=[
            {"key": k, "input": i, "output": o} for k, i, o in zip(state_keys, state_in, state_out)
        ],
    )


def _current(module: torch.nn.Module, key: str) -> torch.Tensor:
    path, _, attr = key.rpartition(".")
    owner = module.get_submodule(path) if path else module
    value = getattr(owner, attr)
    if not isinstance(value, torch.Tensor):
        raise BuildError(f"state `{key}` is not a tensor")
    return value


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
    dynamo exporter's shape plumbing (Shape/Expand/CastLike around batch norm) without folding any
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
    before = type(proto)()
    before.CopyFrom(proto)
    out = onnxscript.optimizer.optimize(proto)
    if _undefined_inputs(out.graph):  # it dropped a constant it made (Clip's bounds): skip it
        out = before
    graph = out.graph
    del graph.input[n_inputs:]
    graph.initializer.extend(stubs[name] for name in weights)
    return out


def _undefined_inputs(graph: Any) -> list[str]:
    """Node inputs that no graph input, initializer or earlier node defines."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    missing = []
    for node in graph.node:
        missing += [i for i in node.input if i not in known]
        known.update(node.output)
    return missing


def first_line(e: BaseException) -> str:
    """A readable one-line cause: the innermost exception's first line, without ANSI colour."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _np_dtype(t: torch.Tensor) -> np.dtype:
    return torch.empty(0, dtype=t.dtype).numpy().dtype


def cut_graph(model: Any, inputs: dict[str, str], outputs: dict[str, str]) -> Any:
    """The part of `model` that computes `outputs` from `inputs` (both renamed as the dicts
    say), as a model of its own; a ValueError when it needs another input, or when a graph
    holds subgraphs (their outer names are not followed)."""
    import onnx

    g = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        raise ValueError("a node holds a subgraph")
    produced = {o for n in g.node for o in n.output}
    if any(o not in produced for o in outputs):
        raise ValueError("an output is not computed by a node")
    need, kept = set(outputs), []
    for node in reversed(g.node):
        if need.intersection(node.output):
            kept.append(node)
            need.update(i for i in node.input if i)
    graph_inputs = {vi.name for vi in g.input}
    if (need & graph_inputs) - set(inputs):
        raise ValueError("a part needs another part's input")
    names = {**inputs, **outputs}

    def rename(n: str) -> str:
        return names.get(n, n)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    new = out.graph
    for field_name in ("node", "input", "output", "initializer", "value_info"):
        new.ClearField(field_name)
    for node in reversed(kept):
        copy_ = new.node.add()
        copy_.CopyFrom(node)
        copy_.input[:] = [rename(i) for i in node.input]
        copy_.output[:] = [rename(o) for o in node.output]
    by_name = {vi.name: vi for vi in [*g.input, *g.output]}
    for src, dst in [*inputs.items(), *outputs.items()]:
        vi = (new.input if src in inputs else new.output).add()
        vi.CopyFrom(by_name[src])
        vi.name = dst
    new.initializer.extend(t for t in g.initializer if t.name in need)
    new.value_info.extend(vi for vi in g.value_info if vi.name in need - set(names))
    return out


def canonical_names(model: Any, keep: set[str]) -> None:
    """Name nodes and inner values by position (`n<i>`, `v<i>`), constants by first use
    (`c<i>`), and order constants and value infos the same way, dropping the exporter's notes
    on them: graphs computing the same thing are then the same bytes whatever their exporter
    named them. Graph inputs and outputs and the names in `keep` (weights) stay; a graph with
    subgraphs is left as it is."""
    import onnx

    g = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        return
    fixed = {vi.name for vi in [*g.input, *g.output]} | keep | {""}
    consts = {t.name for t in g.initializer} - fixed
    names: dict[str, str] = {}
    order: list[str] = []  # values in the order nodes use or make them
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        for x in [*node.input, *node.output]:
            if x not in fixed and x not in names:
                kind = "c" if x in consts else "v"
                names[x] = f"{kind}{sum(v[0] == kind for v in names.values())}"
                order.append(x)
    if fixed.intersection(names.values()):  # a weight already has such a name
        return
    rank = {x: i for i, x in enumerate(order)}
    inits = sorted(g.initializer, key=lambda t: rank.get(t.name, len(rank)))
    infos = sorted((vi for vi in g.value_info if vi.name in rank), key=lambda vi: rank[vi.name])
    for field_name, items in (("initializer", inits), ("value_info", infos)):
        kept = [type(x)() for x in items]
        for new, old in zip(kept, items):
            new.CopyFrom(old)
        g.ClearField(field_name)
        getattr(g, field_name).extend(kept)
    for t in g.initializer:
        t.name = names.get(t.name, t.name)
    for vi in [*g.value_info, *g.input, *g.output]:
        vi.name = names.get(vi.name, vi.name)
        del vi.metadata_props[:]
    for node in g.node:
        node.input[:] = [names.get(x, x) for x in node.input]
        node.output[:] = [names.get(x, x) for x in node.output]
