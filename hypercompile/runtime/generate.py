"""Generated weights: a variant whose weights a generator graph G (the hypernet, exported once)
makes from a few inputs stored per condition, or taken from the condition's own values. G runs
on ONNX Runtime when the variant is bound (its session made once and kept for the bundle's
life); the weights it gives then bind to the target graph exactly as stored weights do, and the
bundle's LRU of runners keeps them per condition. Conditions not listed at build time get a
variant here too (`unlisted`), when one generator can form its inputs from them: such a variant
was never checked against PyTorch, so it is only made on request and marked `unverified`."""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.conditions import cond_key, show
from ..core.manifest import Generator, GenInput, Manifest, Variant
from ..errors import BundleError, ConditionError, UnverifiedConditionWarning
from .runners import Runner
from .tensors import TensorStore

UNLISTED_KEPT = 256  # unlisted conditions remembered (their variants; runners are the LRU's)
_NUMBER = (int, float, np.integer, np.floating)

# (graph id, back end, the variant whose tensor ids to share, weights, in a program) -> runner
LoadGraph = Callable[[str, str, Variant, dict[str, np.ndarray], bool], Runner]


class Generators:
    """A bundle's generators: their warm sessions, the inputs of each condition, and the
    variants of conditions not listed at build time."""

    def __init__(self, manifest: Manifest, tensors: TensorStore, load_graph: LoadGraph):
        self.manifest, self._tensors, self._load_graph = manifest, tensors, load_graph
        self._runners: dict[str, Runner] = {}
        self._stored: dict[str, dict[str, np.ndarray]] = {}  # per generator: tensor id -> input
        self._unlisted: OrderedDict[str, Variant] = OrderedDict()
        self._lock = threading.RLock()

    def weights(self, variant: Variant) -> dict[str, np.ndarray]:
        """The weights `variant`'s generator makes for it, by target weight name."""
        gen = self.manifest.generator_of(variant)
        if gen is None:
            return {}
        feeds = self.inputs(gen, variant)
        graph = self.manifest.graphs[gen.graph]
        outs = self._runner(gen).run(feeds)
        named = dict(zip(graph.output_names, outs))
        return {weight: named[out] for out, weight in gen.outputs.items()}

    def _runner(self, gen: Generator) -> Runner:
        with self._lock:
            runner = self._runners.get(gen.id)
            if runner is None:
                weights = self._tensors.tensors(gen.weights)
                holder = Variant(id=gen.id, cond={}, weights=gen.weights, artifacts={})
                runner = self._load_graph(gen.graph, "onnxruntime", holder, weights, False)
                self._runners[gen.id] = runner
            return runner

    def inputs(self, gen: Generator, variant: Variant) -> dict[str, np.ndarray]:
        """G's inputs for `variant`: stored ones from the bundle, the others formed from the
        condition's values."""
        ids = variant.generated["inputs"] if variant.generated else {}
        stored = {name: self._stored_inputs(gen)[tid] for name, tid in ids.items()}
        feeds = {}
        for spec in gen.inputs:
            if spec.name in stored:
                arr = stored[spec.name]
                if arr.dtype != np.dtype(spec.dtype) or list(arr.shape) != spec.shape:
                    raise BundleError(
                        f"variant {variant.id}: stored input {spec.name!r} of generator "
                        f"{gen.id} is {arr.dtype} {list(arr.shape)}, G takes {spec.dtype} "
                        f"{spec.shape}"
                    )
                feeds[spec.name] = arr
            elif spec.key is not None and spec.key in variant.cond:
                feeds[spec.name] = form_input(spec, variant.cond[spec.key])
            else:
                raise ConditionError(
                    f"condition {_fmt(variant.cond)} gives no value for input {spec.name!r} of "
                    f"generator {gen.id}" + (f" (give {spec.key}=...)" if spec.key else "")
                )
        return feeds

    def _stored_inputs(self, gen: Generator) -> dict[str, np.ndarray]:
        """Every input stored for `gen`'s conditions, read once and kept: a few numbers per
        condition, which a switch should not have to read (and hash) a file for."""
        with self._lock:
            if gen.id not in self._stored:
                ids = {t for v in self._made_by(gen) for t in v.generated["inputs"].values()}  # type: ignore[index]
                self._stored[gen.id] = self._tensors.tensors({t: t for t in ids})
            return self._stored[gen.id]

    # -- conditions not listed at build time ---------------------------------------------------
    def unlisted(self, cond: dict[str, Any]) -> Variant:
        """A variant for `cond`, which no listed variant matches: the one generator that can
        form all its inputs from `cond` makes its weights; its other weights must be the same
        for every variant it made at build time. ConditionError when none or several can."""
        try:
            key = cond_key(cond)
        except (TypeError, ValueError) as e:
            raise ConditionError(f"condition {_fmt(cond)} is not JSON: {e}") from None
        with self._lock:
            if key in self._unlisted:
                self._unlisted.move_to_end(key)
                return self._unlisted[key]
        found, why = [], []
        for gen in self.manifest.generators.values():
            reason = self._why_not(gen, cond)
            if reason is None:
                found.append(gen)
            else:
                why.append(f"generator {gen.id}: {reason}")
        if len(found) != 1:
            what = "several generators could make it" if found else "; ".join(why)
            raise ConditionError(
                f"condition {_fmt(cond)} is not listed in the bundle and cannot be generated: "
                f"{what or 'the bundle has no generator'}"
            )
        gen = found[0]
        made = self._made_by(gen)
        variant = Variant(
            id="u" + hashlib.sha256(key.encode()).hexdigest()[:12],
            cond=dict(cond),
            weights=dict(made[0].weights),
            artifacts=dict(made[0].artifacts),
            graph=gen.target,
            params=made[0].params,
            bytes=made[0].bytes,
            generated={"generator": gen.id, "inputs": {}},
            unverified=True,
        )
        warnings.warn(
            UnverifiedConditionWarning(
                f"condition {_fmt(cond)} was not listed at build time: its weights come from "
                f"generator {gen.id}, unverified (no parity check against PyTorch)"
            ),
            stacklevel=4,
        )
        with self._lock:
            self._unlisted[key] = variant
            while len(self._unlisted) > UNLISTED_KEPT:
                self._unlisted.popitem(last=False)
        return variant

    def _made_by(self, gen: Generator) -> list[Variant]:
        return [
            v
            for v in self.manifest.variants
            if v.generated is not None and v.generated["generator"] == gen.id
        ]

    def _why_not(self, gen: Generator, cond: dict[str, Any]) -> str | None:
        """Why generator `gen` cannot make the weights of unlisted `cond`, or None."""
        made = self._made_by(gen)
        if not made:
            return "it made no listed variant"
        keys = {k for v in made for k in v.cond} | {i.key for i in gen.inputs if i.key}
        extra = sorted(set(cond) - keys)
        if extra:
            return f"its conditions have no key {extra[0]!r}"
        for spec in gen.inputs:
            if spec.key is None:
                return f"its input {spec.name!r} is stored per listed condition only"
            if spec.key not in cond:
                return f"give {spec.key}=... (its input {spec.name!r})"
            try:
                form_input(spec, cond[spec.key])
            except ConditionError as e:
                return str(e)
        if any(v.weights != made[0].weights for v in made[1:]):
            return "the weights it does not make differ between its listed conditions"
        return None


def form_input(spec: GenInput, value: Any) -> np.ndarray:
    """A condition's value (a number, or a nested list of numbers) as generator input `spec`:
    its dtype, and its shape once its elements are counted right."""
    size = int(np.prod(spec.shape, dtype=np.int64))
    want = f"{size} number(s) for {spec.name!r} ({spec.dtype} {spec.shape})"
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        arr = np.asarray(None)
    if arr.dtype.kind not in "iuf" or (arr.dtype == object):
        raise ConditionError(f"{show(value)} is not {want}")
    if arr.size != size:
        raise ConditionError(f"{show(value)} has {arr.size} number(s), not {want}")
    if not np.all(np.isfinite(arr)):
        raise ConditionError(f"{show(value)} is not finite")
    dtype = np.dtype(spec.dtype)
    if dtype.kind in "iu" and not np.array_equal(arr, np.round(arr)):
        raise ConditionError(f"{show(value)} must be whole numbers for {spec.name!r}")
    out = arr.astype(dtype).reshape(spec.shape)
    out.flags.writeable = False
    return out


def _fmt(cond: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={show(v)}" for k, v in cond.items()) + "}" if cond else "{}"
