"""Storage of weights, per architecture: materialized (every condition's tensors, by content) or
generated (the model's `generator()` G exported once as a graph of its own, with G's parameters
and its few inputs per condition stored instead; the runtime runs G when it binds a variant).

A HyperModel offers generation with `generator()` -> an nn.Module G and `generator_inputs(cond)`
-> a tuple of tensors, such that `G(*generator_inputs(cond))` returns the target's weights: a
tuple in the order of `build(cond).state_dict()`'s floating-point tensors, or a dict by name
(the weights it leaves out are stored as usual). `generator_input_keys()` (optional) names, per
input, the condition key a condition not listed at build time gives its value with.

`storage="auto"` chooses per architecture: materialize when the target's `storage_mb` holds
every materialized weight, or when G's measured switch time exceeds `max_switch_ms`; else the
smaller on disk. The choice, why, and the figures go into the target graph's `storage`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import tensors as fmt
from ..core.manifest import Generator, GenInput, Graph, TensorSpec, Variant
from ..core.targets import Target
from ..errors import BuildError, ConditionError
from ..frontend.export import export_graph, first_line
from ..frontend.materialize import cond_label
from ..runtime.generate import form_input
from ..runtime.runners import Binding, get_runner_factory

STORAGE_MODES = ("auto", "materialize", "generate")
WEIGHT_DTYPES = ("fp32", "fp16")
GENERATOR_RTOL = 1e-4  # G's weights against generate(cond)'s, relative to their magnitude
SWITCH_SAMPLES = 5  # conditions timed for the switch figures
CALL_SAMPLES = 50


def stored_form(arr: np.ndarray, half: bool) -> np.ndarray:
    """A weight as the bundle stores it: float32 as float16 with `--weights fp16`."""
    return arr.astype(np.float16) if half and arr.dtype == np.float32 else arr


class GeneratorWrapper(torch.nn.Module):
    """G with its outputs as a tuple: the weights the target graph takes, in `picks` order
    (positions into G's tuple, or names of its dict)."""

    def __init__(self, g: torch.nn.Module, picks: list[Any]):
        super().__init__()
        self.g = g
        self.picks = list(picks)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.g(*xs)
        if isinstance(out, dict):
            return tuple(out[k] for k in self.picks)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return tuple(out[i] for i in self.picks)


@dataclass
class _Pending:
    """A variant whose weights wait for its architecture's storage choice."""

    variant: Variant
    tensors: dict[str, np.ndarray]  # every weight it binds, as computed (float32)
    inputs: tuple[np.ndarray, ...]  # G's inputs for its condition
    example: dict[str, np.ndarray]  # example inputs, by graph input name (switch timing)


@dataclass
class _Layout:
    """How G's outputs meet one target graph: G's picks and the weights they give."""

    picks: list[Any]
    names: list[str]


class StoragePlan:
    """The build's storage choices: `takes` holds back the weights of variants that G may make,
    `finish` chooses per architecture and writes them (through `write`, or as generated)."""

    def __init__(
        self,
        hm: Any,
        mode: str,
        half: bool,
        target: Target,
        max_switch_ms: float | None = None,
    ):
        if mode not in STORAGE_MODES:
            raise BuildError(f"storage must be one of {', '.join(STORAGE_MODES)}, not {mode!r}")
        self.hm, self.mode, self.half, self.target = hm, mode, half, target
        self.max_switch_ms = max_switch_ms
        has = callable(getattr(hm, "generator", None)) and callable(
            getattr(hm, "generator_inputs", None)
        )
        if mode == "generate" and not has:
            raise BuildError(
                "--storage generate needs a model with generator() and generator_inputs(cond)"
            )
        self.g: torch.nn.Module | None = None
        if has and mode != "materialize":
            self.g = hm.generator()
            if not isinstance(self.g, torch.nn.Module):
                raise BuildError(f"generator() returned {type(self.g).__name__}, not an nn.Module")
            self.g.eval()
        self.pending: dict[str, list[_Pending]] = {}
        self.layouts: dict[str, _Layout] = {}
        self.refused: dict[str, str] = {}  # graph id -> why G cannot make its weights
        self.generators: dict[str, Generator] = {}
        self._exported = 0

    # -- collecting ---------------------------------------------------------------------------
    def refuse(self, v: Variant, why: str) -> None:
        """A variant G cannot make (a program, state): an error when generation was asked."""
        if self.g is not None and self.mode == "generate":
            raise BuildError(f"variant {cond_label(v.cond)}: --storage generate: {why}")

    def takes(
        self,
        v: Variant,
        graph: Graph,
        target: torch.nn.Module,
        tensors: dict[str, np.ndarray],
        example: tuple[torch.Tensor, ...],
    ) -> bool:
        """Whether `v`'s weights wait for its architecture's choice (G can make them)."""
        if self.g is None or graph.id in self.refused:
            return False
        inputs: tuple[torch.Tensor, ...] = ()
        if graph.state:
            why: str | None = "it keeps state between calls"
        else:
            inputs = self._inputs(v.cond)
            why = self._check(v, graph, target, tensors, inputs)
        if why is not None:
            self.refuse(v, why)
            self.refused[graph.id] = why
            return False
        names = [s.name for s in graph.inputs]
        feeds = {n: x.detach().numpy() for n, x in zip(names, example)}
        arrays = tuple(x.numpy() for x in inputs)
        self.pending.setdefault(graph.id, []).append(_Pending(v, tensors, arrays, feeds))
        return True

    def _inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        xs = self.hm.generator_inputs(cond)
        xs = (xs,) if isinstance(xs, torch.Tensor) else tuple(xs)
        if not xs or not all(isinstance(x, torch.Tensor) for x in xs):
            raise BuildError(f"variant {cond_label(cond)}: generator_inputs() must return tensors")
        return tuple(x.detach() for x in xs)

    def _check(self, v, graph: Graph, target, tensors, inputs) -> str | None:
        """None when G's output for `v` gives the weights `generate` gave (shapes, dtypes and
        values), else why not; BuildError for a G that does not fit the protocol."""
        label = cond_label(v.cond)
        try:
            with torch.no_grad():
                out = self.g(*inputs)  # type: ignore[misc]
        except Exception as e:  # the model's own code
            raise BuildError(f"variant {label}: generator() fails: {first_line(e)}") from None
        layout = self.layouts.get(graph.id) or self._layout(out, graph, target, label)
        first = self.pending.get(graph.id)
        if first and [x.shape for x in first[0].inputs] != [tuple(x.shape) for x in inputs]:
            raise BuildError(f"variant {label}: generator_inputs() change shape between conditions")
        made = GeneratorWrapper(torch.nn.Identity(), layout.picks)(out)
        for name, t in zip(layout.names, made):
            want = tensors[name]
            got = t.detach().numpy()
            if got.shape != want.shape or got.dtype != want.dtype:
                return (
                    f"generator() gives {name} as {got.dtype} {list(got.shape)}, the target "
                    f"takes {want.dtype} {list(want.shape)}"
                )
            scale = max(float(np.abs(want).max()) if want.size else 0.0, 1e-6)
            err = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
            if err > GENERATOR_RTOL * scale:
                raise BuildError(
                    f"variant {label}: generator() disagrees with generate() on {name} (max "
                    f"abs error {err:.3g}); G must make the weights generate() gives"
                )
        self.layouts[graph.id] = layout
        return None

    def _layout(self, out: Any, graph: Graph, target, label: str) -> _Layout:
        state = target.state_dict()
        taken = set(graph.weights)
        if isinstance(out, dict):
            unknown = sorted(str(k) for k in out if k not in state)
            if unknown:
                raise BuildError(
                    f"variant {label}: generator() gives {unknown[0]!r}, which is no tensor of "
                    "the target's state_dict"
                )
            picks = [k for k in graph.weights if k in out]
            return _Layout(picks, list(picks))
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        floats = [k for k, t in state.items() if t.is_floating_point()]
        if len(out) != len(floats) or not all(isinstance(t, torch.Tensor) for t in out):
            raise BuildError(
                f"variant {label}: generator() gives {len(out)} value(s); the target has "
                f"{len(floats)} floating-point tensors (its state_dict's, in order), or give a "
                "dict name -> tensor"
            )
        picks = [i for i, k in enumerate(floats) if k in taken]
        return _Layout(picks, [floats[i] for i in picks])

    # -- choosing and writing -----------------------------------------------------------------
    def finish(
        self,
        tmp: Path,
        graphs: dict[str, Graph],
        store: fmt.TensorStore,
        write: Callable[[Variant, dict[str, np.ndarray]], None],
        compile_graph: Callable[[Graph], None],
    ) -> None:
        """Choose per architecture, then store every held-back variant's weights."""
        for gid, why in self.refused.items():
            graphs[gid].storage = {"mode": "materialize", "chosen": f"not generated: {why}"}
        total = store.nbytes + sum(
            self._unique(p.tensors for p in pend) for pend in self.pending.values()
        )
        for gid, pend in self.pending.items():
            graph = graphs[gid]
            if gid in self.refused:  # a later variant of this graph could not be generated
                for p in pend:
                    write(p.variant, p.tensors)
                continue
            figures = self._sizes(graph, None, pend)
            gen_graph = None
            if (
                self.mode == "generate"
                or figures["generated_bytes"] < figures["materialized_bytes"]
            ):
                try:
                    gen_graph = self._export(gid, pend[0], tmp, graphs, compile_graph)
                except BuildError as e:
                    if self.mode == "generate":
                        raise
                    graph.storage = {"mode": "materialize", "chosen": f"not generated: {e}"}
                    for p in pend:
                        write(p.variant, p.tensors)
                    continue
                figures = self._sizes(graph, gen_graph, pend)  # G's parameters in its graph
                figures.update(self._times(graph, gen_graph, pend, tmp))
            mode, chosen = self._choose(figures, total)
            graph.storage = {"mode": mode, "chosen": chosen, **figures}
            if mode == "generate":
                self._write_generated(gid, gen_graph, pend, tmp, store, write)
                continue
            if gen_graph is not None:
                del graphs[gen_graph.id]
                (tmp / gen_graph.path).unlink()
            for p in pend:
                write(p.variant, p.tensors)

    def _choose(self, fig: dict[str, Any], total: int) -> tuple[str, str]:
        if self.mode == "generate":
            return "generate", "asked (--storage generate)"
        budget = self.target.storage_mb * (1 << 20)
        if budget and total <= budget:
            return "materialize", (
                f"auto: every materialized weight ({total} bytes) fits the target's storage_mb "
                f"({self.target.storage_mb}), and materialized variants switch faster"
            )
        switch = fig.get("switch_ms")
        if self.max_switch_ms is not None and switch is not None and switch > self.max_switch_ms:
            return "materialize", (
                f"auto: the generator's switch time {fig['switch_ms']:.3g} ms exceeds "
                f"max_switch_ms {self.max_switch_ms:g}"
            )
        if fig["generated_bytes"] < fig["materialized_bytes"]:
            return "generate", "auto: smaller on disk"
        return "materialize", "auto: smaller on disk"

    def _unique(self, groups: Any) -> int:
        seen: dict[str, int] = {}
        for tensors in groups:
            for arr in tensors.values():
                form = stored_form(arr, self.half)
                seen.setdefault(fmt.tensor_id(form), form.nbytes)
        return sum(seen.values())

    def _export(self, gid: str, first: _Pending, tmp: Path, graphs, compile_graph) -> Graph:
        """G, exported for target graph `gid` (its outputs: that graph's generated weights)."""
        layout = self.layouts[gid]
        wrapper = GeneratorWrapper(self.g, layout.picks).eval()  # type: ignore[arg-type]
        xs = tuple(torch.from_numpy(np.array(x)) for x in first.inputs)
        gen_id = f"gen{self._exported}"
        self._exported += 1
        path = tmp / "graphs" / f"{gen_id}.onnx"
        t = time.perf_counter()
        info = export_graph(wrapper, xs, path, f"generator of graph {gid}", batch=False)
        if len(info.outputs) != len(layout.names):
            raise BuildError(f"the generator's graph for {gid} lost outputs in export")
        graph = Graph(
            id=gen_id,
            path=f"graphs/{gen_id}.onnx",
            weights=info.weights,
            inputs=[TensorSpec(**i) for i in info.inputs],
            outputs=[TensorSpec(**o) for o in info.outputs],
            export_s=round(time.perf_counter() - t, 3),
            exporter=info.exporter,
        )
        graphs[gen_id] = graph
        compile_graph(graph)
        return graph

    def _g_weights(self, graph: Graph | None) -> dict[str, np.ndarray]:
        """G's parameters in its graph (before export: every floating one)."""
        state = GeneratorWrapper(self.g, []).state_dict()  # type: ignore[arg-type]
        if graph is None:
            return {n: t.detach().numpy() for n, t in state.items() if t.is_floating_point()}
        return {n: state[n].detach().numpy() for n in graph.weights}

    def _sizes(self, graph: Graph, gen: Graph | None, pend: list[_Pending]) -> dict:
        """Bytes on disk both ways (as stored: float16 with `--weights fp16`)."""
        names = set(self.layouts[graph.id].names)
        g_bytes = self._unique([self._g_weights(gen)])
        in_bytes = self._unique({str(i): x for i, x in enumerate(p.inputs)} for p in pend)
        other = self._unique({k: a for k, a in p.tensors.items() if k not in names} for p in pend)
        fig: dict[str, Any] = {
            "variants": len(pend),
            "bytes_per_variant": int(statistics.mean(p.variant.bytes for p in pend)),
            "materialized_bytes": self._unique(p.tensors for p in pend),
            "generated_bytes": g_bytes + in_bytes + other,
            "generator_bytes": g_bytes,
            "input_bytes_per_variant": int(sum(x.nbytes for x in pend[0].inputs)),
        }
        return fig

    def _times(self, graph: Graph, gen: Graph, pend: list[_Pending], tmp: Path) -> dict:
        """Times measured here on ONNX Runtime: the first call on a new condition (G, binding,
        the call) against a materialized variant's (binding, the call), and a steady call."""
        factory = get_runner_factory("onnxruntime")
        g_weights = {
            n: stored_form(a, self.half).astype(a.dtype) for n, a in self._g_weights(gen).items()
        }
        g_runner = factory.load(self._binding(tmp / gen.path, gen, g_weights))
        names = self.layouts[graph.id].names
        switch, plain, runner, feeds = [], [], None, {}
        for p in pend[:SWITCH_SAMPLES]:
            feeds = p.example
            t0 = time.perf_counter()
            outs = g_runner.run({s.name: x for s, x in zip(gen.inputs, p.inputs)})
            made = {**p.tensors, **dict(zip(names, outs))}
            runner = factory.load(self._binding(tmp / graph.path, graph, made))
            runner.run(feeds)
            t1 = time.perf_counter()
            factory.load(self._binding(tmp / graph.path, graph, p.tensors)).run(feeds)
            switch.append(t1 - t0)
            plain.append(time.perf_counter() - t1)
        calls = []
        for _ in range(CALL_SAMPLES):
            t0 = time.perf_counter()
            runner.run(feeds)  # type: ignore[union-attr]
            calls.append(time.perf_counter() - t0)
        return {
            "switch_ms": round(1e3 * statistics.median(switch), 4),
            "materialized_switch_ms": round(1e3 * statistics.median(plain), 4),
            "call_ms": round(1e3 * statistics.median(calls), 4),
        }

    def _binding(self, path: Path, graph: Graph, weights: dict[str, np.ndarray]) -> Binding:
        return Binding(
            artifact=path.read_bytes(),
            weights={n: np.ascontiguousarray(weights[n]) for n in graph.weights},
            target=self.target,
            inputs=[s.to_json() for s in graph.inputs],
            outputs=[s.to_json() for s in graph.outputs],
            ort_pool="shared",  # as the runtime runs a bundle with generators
        )

    def _write_generated(self, gid, gen_graph: Graph, pend, tmp: Path, store, write) -> None:
        layout = self.layouts[gid]
        keys = self._input_keys(gen_graph, pend)
        specs = [
            GenInput(s.name, s.dtype, [int(d) for d in s.shape], stored, key)  # type: ignore[arg-type]
            for s, (stored, key) in zip(gen_graph.inputs, keys)
        ]
        # G's parameters in a file, every condition's stored inputs in another (a file per
        # condition would cost more in headers and hashes than its inputs weigh)
        weights = {
            n: store.add(stored_form(a, self.half)) for n, a in self._g_weights(gen_graph).items()
        }
        store.flush(tmp, f"weights/{gen_graph.id}.safetensors")
        for p in pend:
            stored = {
                s.name: store.add(stored_form(x, self.half))
                for s, x in zip(specs, p.inputs)
                if s.stored
            }
            p.variant.generated = {"generator": gen_graph.id, "inputs": stored}
        store.flush(tmp, f"weights/{gen_graph.id}-inputs.safetensors")
        self.generators[gen_graph.id] = Generator(
            id=gen_graph.id,
            graph=gen_graph.id,
            target=gid,
            weights=weights,
            inputs=specs,
            outputs={o.name: n for o, n in zip(gen_graph.outputs, layout.names)},
        )
        made = set(layout.names)
        for p in pend:  # the weights G does not make, stored as usual
            write(p.variant, {k: a for k, a in p.tensors.items() if k not in made})

    def _input_keys(self, gen: Graph, pend: list[_Pending]) -> list[tuple[bool, str | None]]:
        """Per G input: whether it is stored per condition, and the condition key a condition
        gives it with (declared by `generator_input_keys()`, else found: a key whose value is
        the input in every condition). An input a key gives in every condition is not stored."""
        declared = getattr(self.hm, "generator_input_keys", None)
        keys = list(declared()) if callable(declared) else [None] * len(gen.inputs)
        if len(keys) != len(gen.inputs):
            raise BuildError(
                f"generator_input_keys() names {len(keys)} key(s); G takes {len(gen.inputs)}"
            )
        out = []
        for i, spec in enumerate(gen.inputs):
            probe = GenInput(spec.name, spec.dtype, [int(d) for d in spec.shape], False, "?")
            cands = [keys[i]] if keys[i] else sorted({k for p in pend for k in p.variant.cond})
            given = next((k for k in cands if all(_gives(probe, p, k, i) for p in pend)), None)
            out.append((given is None, given or keys[i]))
        return out


def _gives(spec: GenInput, p: _Pending, key: str, i: int) -> bool:
    """Whether condition key `key` of `p` holds exactly G's input `i`."""
    if key not in p.variant.cond:
        return False
    try:
        value = form_input(spec, p.variant.cond[key])
    except ConditionError:
        return False
    return bool(np.array_equal(value, p.inputs[i]))
