"""The torch-free host runtime: load a bundle, pick a variant, bind its weights, run it."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..core import tensors as fmt
from ..core.conditions import cond_key, show, value_key
from ..core.manifest import MANIFEST, Manifest, Profile, TensorSpec, Variant
from ..core.targets import Target
from ..errors import (
    BackendError,
    BudgetError,
    BundleError,
    ConditionError,
    InputError,
    ProfileError,
    StateError,
)
from .checks import run_checks, unpack_checks
from .generate import Generators
from .runners import ORT_POOLS, Binding, OrtPool, Runner, SharedTensors, get_runner_factory
from .stream import StateCarrier, Stream
from .tensors import TensorStore

DEFAULT_CACHE_SIZE = 8
# Budget selection: quality scores within this fraction of the best count as equal (a score
# measured on a finite test set is noisy); the most parameters breaks the tie.
QUALITY_TIE = 0.02


def _items_key(cond: dict[str, Any]) -> tuple:
    """A fast exact-match key for scalar conditions (TypeError for a list or dict value); the
    type is part of it, so that `True` and `1` stay apart as in the canonical key."""
    if len(cond) == 1:
        ((k, v),) = cond.items()
        return ((k, type(v), v),)
    return tuple(sorted((k, type(v), v) for k, v in cond.items()))


@dataclasses.dataclass(frozen=True)
class Choice:
    """What budget selection picked: the variant, the back end, and the profiled p90 it was
    judged by (taken at `profiled_batch`, the smallest profiled batch >= `batch`)."""

    variant: Variant
    backend: str
    p90_ms: float
    batch: int
    profiled_batch: int


def _check_budget_keys(m: Manifest, cond: dict[str, Any]) -> None:
    """A budget may choose the selectable keys only: the first other key not given is a
    ConditionError that names it and some of its values."""
    for key in dict.fromkeys(k for v in m.variants for k in v.cond):
        if key in cond or key in m.selectable:
            continue
        values = list(dict.fromkeys(show(v.cond[key]) for v in m.variants if key in v.cond))
        some = ", ".join(values[:5]) + (", ..." if len(values) > 5 else "")
        declared = ", ".join(m.selectable) or "none"
        raise ConditionError(
            f"a budget does not choose {key}: give {key} (one of {some}); a budget chooses "
            f"only among the keys the model declares selectable ({declared})"
        )


def _timed(v: Variant, rec: Any, backend: str | None, batch_size: int) -> Choice | None:
    """A variant's profiled p90 at the smallest batch >= `batch_size`: on `backend`, else on
    the profile's default back end for it, else on its fastest timed one; None if untimed."""
    best = None
    if rec is None or rec.cond != v.cond:
        return None
    for be, by_batch in rec.results.items():
        if (backend is not None and be != backend) or be not in v.artifacts:
            continue
        b = min((int(k) for k in by_batch if int(k) >= batch_size), default=None)
        if b is None:
            continue
        p90 = float(by_batch[str(b)]["p90_ms"])
        if be == rec.best_backend and backend is None:
            return Choice(v, be, p90, batch_size, b)
        if best is None or p90 < best.p90_ms:
            best = Choice(v, be, p90, batch_size, b)
    return best


class Bundle:
    """A loaded bundle. `run` is safe to call from several threads at once.

    `ort_pool` chooses ONNX Runtime's intra-op threads for this bundle's sessions, recorded on
    each runner's `Binding`: "per-session" (every session its own pool of `threads`, or the
    target's `ort_threads`), "shared" (ONNX Runtime's one process-wide pool), or None: the
    shared pool for DyNN programs (one session per block) and bundles with generators (one
    per condition bound; both: the target's `ort_shared_pool`, without `ort_threads`), and
    per-session pools for other static graphs. The process-wide pool can
    only be made before the process's first ONNX Runtime session, and once it exists ONNX
    Runtime refuses per-session pools: where it cannot be had, "shared" sessions get their own
    pools with spinning off; where it exists, None uses it for static graphs too, and
    "per-session" is refused (BackendError) rather than silently put on it. No session that
    exists is ever moved onto the pool, since it is only made before the first."""

    def __init__(
        self,
        path: Path,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        verify: bool = True,
        threads: int | None = None,
        providers: list[str] | None = None,
        device: str | None = None,
        ort_pool: OrtPool | None = None,
        engine_cache: str | Path | None = None,
    ):
        if ort_pool is not None and ort_pool not in ORT_POOLS:
            raise BackendError(
                f"ort_pool must be 'shared', 'per-session' or None, not {ort_pool!r}"
            )
        self.ort_pool = ort_pool
        self.path = Path(path).resolve()
        self.device = device  # a profile's device key to use instead of this machine's
        # where artifacts built on the device are cached (None: ~/.cache/hypercompile)
        self.engine_cache = Path(engine_cache) if engine_cache is not None else None
        self.manifest: Manifest = Manifest.load(self.path)
        self._loaded = self._manifest_digest()  # to tell a rebuilt bundle from a damaged one
        self.cache_size = max(1, int(cache_size))
        self._check_layout()
        if verify:
            for rel in self.manifest.files:
                self.read(rel)
        self.target: Target = self.manifest.target
        if threads is not None:
            self.target = dataclasses.replace(self.target, ort_threads=int(threads))
        if providers is not None:
            self.target = dataclasses.replace(self.target, ort_providers=tuple(providers))
        self._by_cond = {cond_key(v.cond): v for v in self.manifest.variants}
        self._value_keys = [
            (v, {k: value_key(x) for k, x in v.cond.items()}) for v in self.manifest.variants
        ]
        self._by_items: dict[tuple, Variant] = {}  # flat conditions: no JSON text per run
        for v in self.manifest.variants:
            try:
                self._by_items[_items_key(v.cond)] = v
            except TypeError:
                pass
        self._lock = threading.Lock()
        self._runners: OrderedDict[tuple[str, str], Runner] = OrderedDict()
        self._graph_bytes: dict[str, bytes] = {}
        self._tensors = TensorStore(self.path, self.manifest, self.read)
        self._generators = Generators(self.manifest, self._tensors, self._graph_runner)
        self._shared = SharedTensors()  # each distinct tensor bound once per back end
        self._plans: dict[str, _Plan] = {}
        self._checked: dict[tuple[str, str], dict[str, float]] = {}  # device checks passed
        self._profile: Profile | None = None

    # -- integrity -------------------------------------------------------------------------
    def _check_layout(self) -> None:
        """Every file the manifest names is inside the bundle and covered by its hashes."""
        m = self.manifest
        for rel in m.files:
            fmt.safe_path(self.path, rel)
        rels = [r for v in m.variants for r in v.files()]
        rels += sorted({ref.file for ref in m.tensors.values()})
        rels += [g.path for g in m.graphs.values()]
        rels += [a for g in m.graphs.values() for a in g.artifacts.values()]
        for rel in rels:
            if rel not in m.files:
                fmt.safe_path(self.path, rel)
                raise BundleError(f"{self.path}: {rel!r} is not covered by the manifest hashes")

    def read(self, rel: str, data: bytes | None = None) -> bytes:
        """The bytes of bundle file `rel` (or `data`, read elsewhere), checked against the
        manifest's sha256: a damaged or unlisted file is a BundleError."""
        path = fmt.safe_path(self.path, rel)
        try:
            if data is None:
                data = fmt.read_regular(path, self.manifest.sizes.get(rel))
            if rel not in self.manifest.files or fmt.sha256_bytes(data) != self.manifest.files[rel]:
                raise BundleError(
                    f"{self.path}: {rel} is damaged (sha256 does not match the manifest)"
                )
        except BundleError:
            if self._manifest_digest() != self._loaded:
                raise BundleError(
                    f"{self.path} was replaced (rebuilt) since it was loaded: load it again"
                ) from None
            raise
        return data

    def _manifest_digest(self) -> str | None:
        try:
            return fmt.sha256_file(self.path / MANIFEST)
        except OSError:
            return None

    def weights(self, variant: Variant) -> dict[str, np.ndarray]:
        """A variant's weights by initializer name, read-only. Each distinct stored tensor is
        read once while anything holds it: variants that share a tensor get the same array. A
        generated variant's generator runs now to make the rest."""
        return {**self._tensors.weights(variant), **self._generators.weights(variant)}

    # -- selection -------------------------------------------------------------------------
    @property
    def variants(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(v.cond) for v in self.manifest.variants]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.manifest.inputs]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.manifest.outputs]

    def _matching(self, cond: dict[str, Any]) -> list[Variant]:
        """The variants whose condition has every given key with an equal JSON value (a dict's
        key order aside); a value that is not JSON is a ConditionError."""
        try:
            exact = self._by_items.get(_items_key(cond))
        except TypeError:
            exact = None
        if exact is not None:
            return [exact]
        try:
            want = {k: value_key(x) for k, x in cond.items()}
        except (TypeError, ValueError) as e:
            raise ConditionError(f"condition {_fmt_cond(cond)} is not JSON: {e}") from None
        exact = self._by_cond.get(cond_key(cond))
        if exact is not None:
            return [exact]
        return [v for v, have in self._value_keys if all(have.get(k) == x for k, x in want.items())]

    def _no_match(self, cond: dict[str, Any]) -> ConditionError:
        shown = ", ".join(_fmt_cond(v) for v in self.variants[:8])
        more = "" if len(self.variants) <= 8 else f", ... ({len(self.variants)} in all)"
        if self.manifest.generators:  # (see runtime/generate.py)
            more += "; one not listed can be generated, unverified, with allow_unlisted=True"
        return ConditionError(f"no variant matches {_fmt_cond(cond)}; available: {shown}{more}")

    def select(
        self,
        *,
        budget_ms: float | None = None,
        batch_size: int = 1,
        backend: str | None = None,
        allow_unlisted: bool = False,
        **cond: Any,
    ) -> Variant:
        """The variant whose condition matches `cond` (all given keys). With `budget_ms`,
        the best variant among those matching whose profiled p90 on this device fits the
        budget (see `choose`). `allow_unlisted`: a condition no variant matches gets one whose
        weights a generator makes from it, `unverified` (see `runtime/generate.py`)."""
        if budget_ms is not None:
            return self.choose(budget_ms, batch_size=batch_size, backend=backend, **cond).variant
        found = self._matching(cond)
        if len(found) == 1:
            return found[0]
        if not found and allow_unlisted:
            return self._generators.unlisted(cond)
        if not found:
            raise self._no_match(cond)
        keys = sorted({k for v in found for k in v.cond} - set(cond))
        raise ConditionError(
            f"{len(found)} variants match {_fmt_cond(cond)}; also give {', '.join(keys)}"
        )

    # -- profiles and budgets --------------------------------------------------------------
    def device_key(self) -> str:
        """The key of the profile this bundle uses: `device=` if given, else this machine's
        fingerprint key (see `runtime/fingerprint.py`)."""
        if self.device:
            return self.device
        from .fingerprint import fingerprint_key, local_fingerprint

        return fingerprint_key(local_fingerprint())

    def device_profile(self) -> Profile:
        """The manifest's profile for this device. A profile taken on another device (another
        fingerprint) is never used in its place: this raises ProfileError naming both."""
        if self._profile is not None:
            return self._profile
        from .fingerprint import describe, fingerprint_key, local_fingerprint

        profiles = self.manifest.profile
        key = self.device_key()
        entry = profiles.get(key)
        # the entry must also describe the device its key names (no edited or copied keys)
        if entry is not None and fingerprint_key(entry.device) == key:
            self._profile = entry
            return entry
        if self.device:
            here = f"device {key} (given)"
        else:
            here = f"fingerprint {key}: {describe(local_fingerprint())}"
        others = "; ".join(f"{k} ({describe(e.device)})" for k, e in profiles.items())
        also = f"; the bundle has profiles for {others}" if others else ""
        raise ProfileError(
            f"no profile for this device ({here}){also}; run `hypercompile profile "
            f"{self.path}` here"
        )

    def choose(
        self,
        budget_ms: float,
        *,
        batch_size: int = 1,
        backend: str | None = None,
        **cond: Any,
    ) -> Choice:
        """Among the variants matching `cond`, the one with the highest declared quality (scores
        within QUALITY_TIE of the best count as equal), else the most parameters, whose p90 on
        this device's profile fits `budget_ms`. The p90 is the one of `backend`, or of the
        fastest profiled back end, at the smallest profiled batch >= `batch_size` (latency
        grows with the batch, so a smaller profiled batch would promise too much; the profile's
        default back end where timed); a variant not profiled at such a batch is not a
        candidate. Keys the model did not declare `selectable()` must be given."""
        _check_budget_keys(self.manifest, cond)
        found = self._matching(cond)
        if not found:
            raise self._no_match(cond)
        prof = self.device_profile()
        timed, unprofiled = [], []
        for v in found:
            best = _timed(v, prof.variants.get(v.id), backend, batch_size)
            if best is None:
                unprofiled.append(v)
            else:
                timed.append(best)
        on = f" on {backend}" if backend else ""
        if not timed:
            raise ProfileError(
                f"the profile of this device ({self.device_key()}) has no timing of "
                f"{', '.join(_fmt_cond(v.cond) for v in found[:6])} at batch >= {batch_size}"
                f"{on}; run `hypercompile profile {self.path} --batch {batch_size}`"
            )
        fits = [c for c in timed if c.p90_ms <= budget_ms]
        if not fits:
            fastest = min(timed, key=lambda c: c.p90_ms)
            skipped = (
                f" ({len(unprofiled)} matching variant(s) not profiled at this batch)"
                if unprofiled
                else ""
            )
            raise BudgetError(
                f"no variant fits a budget of {budget_ms:g} ms at batch {batch_size}{on} on "
                f"this device ({self.device_key()}): the fastest, "
                f"{_fmt_cond(fastest.variant.cond)}, has p90 {fastest.p90_ms:.4g} ms on "
                f"{fastest.backend}{skipped}"
            )
        qualities = [c.variant.quality for c in fits]
        if all(q is not None for q in qualities):
            top = max(qualities)  # type: ignore[type-var]
            bar = top - QUALITY_TIE * abs(top)
            fits = [c for c in fits if c.variant.quality >= bar]  # type: ignore[operator]
        return max(fits, key=lambda c: (c.variant.params, -c.p90_ms))

    # -- execution -------------------------------------------------------------------------
    def run(
        self,
        inputs: dict[str, np.ndarray],
        *,
        backend: str | None = None,
        budget_ms: float | None = None,
        allow_unlisted: bool = False,
        **cond: Any,
    ) -> dict[str, np.ndarray]:
        """Run the variant selected by `cond`, or with `budget_ms` the best matching variant
        that fits the budget at the inputs' batch size (see `choose`); returns output name ->
        array. Without `backend`, a variant runs on the back end this device's profile found
        fastest for it, else on the first of the target's back ends it has.
        `allow_unlisted=True` runs a condition the bundle was not built for when its generator
        can make its weights (unverified: see `select`)."""
        if budget_ms is not None:
            choice = self.choose(
                budget_ms, batch_size=batch_of(inputs, self.inputs), backend=backend, **cond
            )
            variant, backend = choice.variant, choice.backend
        else:
            variant = self.select(allow_unlisted=allow_unlisted, **cond)
        plan = self._plan(variant)
        if plan.stateful:
            raise StateError(
                f"variant {_fmt_cond(variant.cond)} keeps state between calls (each answer "
                "depends on the calls before it): run it through `stream()`: "
                "`s = bundle.stream(...); s.run(inputs)`"
            )
        if not plan.fits(inputs):
            _check_inputs(inputs, plan.specs, plan.why_fixed)  # raises the precise error
        runner = self._runner(variant, backend or plan.backend)
        outs = runner.run(inputs)
        if plan.outputs_vary:  # a returned list whose length depends on the path
            return {f"output_{i}": o for i, o in enumerate(outs)}
        return dict(zip(plan.output_names, outs))

    def stream(self, *, backend: str | None = None, **cond: Any) -> Stream:
        """A new sequence of calls of the stateful variant `cond` selects (a model that keeps
        state between calls; `inspect` shows which): `s.run(inputs)` answers like the model's
        next call, `s.reset()` starts over, `s.state` reads the state. Streams are independent
        of each other and share the variant's loaded runner."""
        variant = self.select(**cond)
        graph = self.manifest.graphs.get(variant.graph or "")
        if graph is None or not graph.state:
            raise StateError(
                f"variant {_fmt_cond(variant.cond)} keeps no state between calls: use run()"
            )
        plan = self._plan(variant)
        raw = self._runner(variant, backend or plan.backend)
        carrier = StateCarrier(raw, graph, self.weights(variant))

        def check(inputs: Any) -> None:
            if not plan.fits(inputs):
                _check_inputs(inputs, plan.specs, plan.why_fixed)

        return Stream(carrier, check, plan.output_names)

    def _plan(self, variant: Variant) -> _Plan:
        plan = self._plans.get(variant.id)
        if plan is None:
            plan = self._plans[variant.id] = _Plan(
                *self.manifest.io(variant),
                self._default_backend(variant),
                self.manifest.fixed_batch(variant),
            )
            plan.stateful = bool(self.manifest.state_of(variant))
            if variant.program is not None:
                plan.outputs_vary = self.manifest.programs[variant.program].host.outputs_vary
        return plan

    def _default_backend(self, variant: Variant) -> str:
        if len(variant.artifacts) > 1 and self.manifest.profile:
            try:
                rec = self.device_profile().variants.get(variant.id)
            except ProfileError:
                rec = None
            if rec is not None and rec.best_backend in variant.artifacts:
                return rec.best_backend
        for name in self.target.backends:
            if name in variant.artifacts:
                return name
        return next(iter(variant.artifacts))

    def _runner(self, variant: Variant, backend: str) -> Runner:
        """The cached runner of (variant, back end): for a stateful variant, of its whole graph
        (state as inputs and outputs), which streams wrap."""
        key = (variant.id, backend)
        try:  # the most recent runner again: no reordering, so no lock
            if next(reversed(self._runners)) == key:
                return self._runners[key]
        except (StopIteration, RuntimeError, KeyError):
            pass  # empty, or another thread changed the cache meanwhile
        with self._lock:
            runner = self._runners.get(key)
            if runner is not None:
                self._runners.move_to_end(key)
                return runner
            runner = self._checked_runner(variant, backend)
            self._runners[key] = runner
            while len(self._runners) > self.cache_size:
                self._runners.popitem(last=False)
            return runner

    def load_runner(self, variant: Variant, backend: str) -> Runner:
        """A fresh runner for `variant` on `backend`, outside the cache, ready to answer: an
        artifact the build machine could not check is first checked here against the PyTorch
        answers stored in the bundle (once per process and variant), so a library that answers
        wrongly on this device raises ParityError instead of answering. A stateful variant's
        runner carries its state from call to call, from the stored initial state."""
        return self._carried(variant, self._checked_runner(variant, backend))

    def _checked_runner(self, variant: Variant, backend: str) -> Runner:
        runner = self._load_runner(variant, backend)
        parity = variant.parity.get(backend)
        every = get_runner_factory(backend).checks_every_load and variant.checks is not None
        if every or (parity is not None and parity.deferred):
            key = (variant.id, backend)
            if key not in self._checked or every:
                self._checked[key] = self.run_stored_checks(variant, backend, runner)
        return runner

    def _carried(self, variant: Variant, runner: Runner) -> Runner:
        """`runner` itself, or for a stateful variant a fresh carrier of its state."""
        if not self.manifest.state_of(variant):
            return runner
        return StateCarrier(runner, self.manifest.graphs[variant.graph], self.weights(variant))  # type: ignore[index]

    def device_checks(self) -> dict[tuple[str, str], dict[str, float]]:
        """The on-device checks passed in this process: (variant id, back end) -> worst error."""
        return dict(self._checked)

    def run_stored_checks(self, variant: Variant, backend: str, runner: Any) -> dict[str, float]:
        """Compare `runner` (anything with `run(feeds) -> list of arrays`, over the variant's
        whole graph) with the PyTorch answers the bundle stores for `variant`, in order (a
        stateful variant's cases are one sequence of calls); ParityError past the tolerance."""
        rel = variant.checks
        if not rel:
            raise BundleError(f"{self.path}: variant {variant.id} has no stored checks")
        cases = unpack_checks(fmt.read_tensors(self.read(rel), rel))
        what = f"variant {_fmt_cond(variant.cond)} on {backend}"
        rtol = self.check_rtol(variant, backend)
        return run_checks(self._carried(variant, runner), cases, rtol, what)

    def check_rtol(self, variant: Variant, backend: str) -> float:
        """The tolerance `variant` is checked at on `backend`: the build's, or the larger one
        its artifacts record for their precision (TensorRT fp16 and int8)."""
        recorded = [
            float(self.manifest.graphs[gid].artifact_info.get(backend, {}).get("check_rtol", 0))
            for gid in self.manifest.graphs_of(variant)
        ]
        return max([self.manifest.rtol, *recorded])

    def _load_runner(self, variant: Variant, backend: str) -> Runner:
        if backend not in variant.artifacts:
            have = ", ".join(variant.artifacts)
            raise BackendError(
                f"variant {_fmt_cond(variant.cond)} has no {backend} artifact ({have})"
            )
        factory = get_runner_factory(backend)
        reason = factory.available()
        if reason:
            raise BackendError(reason)
        why_not = factory.runs_here(self.target)
        if why_not:
            raise BackendError(
                f"the {backend} artifacts of this bundle were built for {self.target.name} "
                f"({self.target.arch}); {why_not}: run it on the device, or use "
                "backend='onnxruntime'"
            )
        weights = self.weights(variant)
        if variant.program is None:
            return self._graph_runner(variant.graph, backend, variant, weights, in_program=False)  # type: ignore[arg-type]
        from .program import ProgramRunner

        host = self.manifest.programs[variant.program].host
        gids = self.manifest.graphs_of(variant)
        runners = {
            gid: self._graph_runner(gid, backend, variant, weights, in_program=True) for gid in gids
        }
        inputs = {gid: self.manifest.graphs[gid].input_names for gid in gids}
        return ProgramRunner(host, inputs, runners)

    def _graph_runner(
        self,
        gid: str,
        backend: str,
        variant: Variant,
        weights: dict[str, np.ndarray],
        in_program: bool,
    ) -> Runner:
        """A runner of graph `gid` with `weights` bound (those with an id shared, see
        `Binding`); also a generator's graph, whose weights are its parameters."""
        graph = self.manifest.graphs.get(gid)
        if graph is None or backend not in graph.artifacts:
            raise BundleError(f"{self.path}: graph {gid} has no {backend} artifact")
        rel = graph.artifacts[backend]
        if rel not in self._graph_bytes:
            self._graph_bytes[rel] = self.read(rel)
        self._tensors.check(gid, weights)
        if graph.path not in self._graph_bytes:
            self._graph_bytes[graph.path] = self.read(graph.path)
        binding = Binding(
            artifact=self._graph_bytes[rel],
            weights={n: weights[n] for n in graph.weights},
            target=self.target,
            inputs=[s.to_json() for s in graph.inputs],
            outputs=[s.to_json() for s in graph.outputs],
            in_program=in_program,
            ort_pool=_ort_pool(self, in_program) if backend == "onnxruntime" else "per-session",
            tensor_ids={n: variant.weights[n] for n in graph.weights if n in variant.weights},
            shared=self._shared,
            graph=self._graph_bytes[graph.path],
            read=self.read,
            engine_cache=self.engine_cache,
        )
        return get_runner_factory(backend).load(binding)

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, variants={len(self.manifest.variants)})"


def _ort_pool(bundle: Bundle, in_program: bool) -> OrtPool:
    """ONNX Runtime's threads for one of a bundle's sessions (see the Bundle docstring)."""
    if bundle.ort_pool is not None:
        return bundle.ort_pool
    t = bundle.target
    # programs make a session per block, generators one per condition bound: idle pools
    # of their own would spin and starve the one that runs (a switch took 8 ms, not 1.2)
    if (in_program or bundle.manifest.generators) and t.ort_shared_pool and not t.ort_threads:
        return "shared"
    from .runners.onnxruntime import pool_exists

    return "shared" if pool_exists() else "per-session"  # ORT allows nothing else then


class _Plan:
    """Per-variant facts `run` needs on every call, with a fast input check."""

    def __init__(
        self,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        backend: str,
        why_fixed: str | None = None,
    ):
        self.specs = [s.to_json() for s in inputs]
        self.why_fixed = why_fixed
        self.output_names = [o.name for o in outputs]
        self.backend = backend
        self.stateful = False
        self.outputs_vary = False
        self.names = frozenset(s.name for s in inputs)
        self.items = []
        for spec in inputs:
            fixed = [(i, d) for i, d in enumerate(spec.shape) if isinstance(d, int)]
            batch = [i for i, d in enumerate(spec.shape) if d == "batch"]
            self.items.append((spec.name, np.dtype(spec.dtype), len(spec.shape), fixed, batch))

    def fits(self, inputs: Any) -> bool:
        if type(inputs) is not dict or inputs.keys() != self.names:
            return False
        batch = None
        for name, dtype, ndim, fixed, batch_dims in self.items:
            a = inputs[name]
            if type(a) is not np.ndarray or a.dtype != dtype or a.ndim != ndim:
                return False
            shape = a.shape
            for i, d in fixed:
                if shape[i] != d:
                    return False
            for i in batch_dims:
                if shape[i] < 1 or (batch is not None and shape[i] != batch):
                    return False
                batch = shape[i]
        return True


def batch_of(inputs: Any, specs: list[dict[str, Any]]) -> int:
    """The batch size of `inputs`: the size of the first dimension the specs call `batch`, else
    the first input's leading dimension (1 for scalars)."""
    if not isinstance(inputs, dict):
        return 1
    for spec in specs:
        arr = inputs.get(spec["name"])
        for i, d in enumerate(spec["shape"]):
            if d == "batch" and isinstance(arr, np.ndarray) and i < arr.ndim:
                return int(arr.shape[i])
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if isinstance(first, np.ndarray) and first.ndim else 1


def _fmt_cond(cond: dict[str, Any]) -> str:
    """A condition as `--cond` writes it: `{task=3, lang="1", ks=[3,5,7]}`."""
    return "{" + ", ".join(f"{k}={show(v)}" for k, v in cond.items()) + "}" if cond else "{}"


def _check_inputs(
    inputs: dict[str, np.ndarray], specs: list[dict[str, Any]], why_fixed: str | None = None
) -> dict[str, np.ndarray]:
    """The feeds, or an InputError naming the first input that does not fit its spec (and, for
    a batch the variant was not built for, why its batch is fixed)."""
    if not isinstance(inputs, dict):
        raise InputError("inputs must be a dict of input name -> numpy array")
    names = [s["name"] for s in specs]
    if inputs.keys() != set(names):
        extra = sorted(set(inputs) - set(names))
        missing = [n for n in names if n not in inputs]
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unknown input(s) {', '.join(extra)}")
        raise InputError(f"{'; '.join(parts)} (expected {', '.join(names)})")
    feeds = {}
    batch = None
    for spec in specs:
        name, arr = spec["name"], inputs[spec["name"]]
        if not isinstance(arr, np.ndarray):
            raise InputError(f"input {name!r} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype.name != spec["dtype"]:
            raise InputError(
                f"input {name!r}: expected dtype {spec['dtype']}, got {arr.dtype.name}"
            )
        if arr.dtype != np.dtype(spec["dtype"]):  # same name, other byte order
            raise InputError(
                f"input {name!r}: expected native-byte-order {spec['dtype']}, got "
                f"{arr.dtype.str!r}; convert it with .astype({spec['dtype']!r})"
            )
        shape = spec["shape"]
        ok = len(arr.shape) == len(shape)
        for want, got in zip(shape, arr.shape):
            if isinstance(want, int):
                ok = ok and want == got
            elif want == "batch":
                ok = ok and got >= 1 and (batch is None or batch == got)
                batch = got
        if not ok:
            want_s = "[" + ", ".join(str(d) for d in shape) + "]"
            only = (
                f" (this variant takes batch {shape[0]} only: {why_fixed})"
                if why_fixed
                and shape
                and arr.ndim == len(shape)
                and arr.shape[1:] == tuple(shape[1:])
                else ""
            )
            raise InputError(
                f"input {name!r}: expected shape {want_s}, got {list(arr.shape)}{only}"
            )
        feeds[name] = arr
    return feeds


def prepare(bundle: Bundle, backend: str = "tensorrt", **cond: Any) -> list[dict[str, Any]]:
    """Make every matching variant's `backend` artifacts ready on this device ahead of first
    use (TensorRT: build each engine or fetch it from the cache, refit it, run the stored
    checks), keeping the runners in the bundle's cache; one record per variant: its condition,
    its checks and its engines."""
    chosen = bundle._matching(cond) if cond else list(bundle.manifest.variants)
    if not chosen:
        raise bundle._no_match(cond)
    report = []
    for v in chosen:
        if backend not in v.artifacts:
            continue
        runner = bundle._runner(v, backend)
        parts = runner.runners.values() if hasattr(runner, "runners") else [runner]
        engines = [r.info.to_json() for r in parts if hasattr(r, "info")]
        checks = bundle.device_checks().get((v.id, backend))
        report.append({"cond": v.cond, "checks": checks, "engines": engines})
    return report


def load(
    path: str | Path,
    *,
    cache_size: int = DEFAULT_CACHE_SIZE,
    verify: bool = True,
    threads: int | None = None,
    device: str | None = None,
    ort_pool: OrtPool | None = None,
    engine_cache: str | Path | None = None,
) -> Bundle:
    """Open a bundle directory; checks every file's sha256 unless `verify=False`.
    `threads` overrides the target's intra-op thread count (0: the back end's default);
    `device` names the stored profile to use (a key `inspect` shows) instead of the one whose
    fingerprint matches this machine.

    `ort_pool` chooses, for this bundle only, how its ONNX Runtime sessions get intra-op
    threads: "per-session" (each session its own pool), "shared" (ONNX Runtime's process-wide
    pool: one set of threads for all of them), or None (the default): the shared pool for DyNN
    programs, whose many block sessions would otherwise each keep a pool, and per-session
    pools for static graphs. ONNX Runtime can only make the shared pool before the process's
    first session and then refuses per-session pools, so: a bundle asking for the pool after
    another session came first gets per-session pools with spinning off; once the pool exists,
    None uses it for static graphs too, and "per-session" raises BackendError.

    `engine_cache`: where artifacts built on this device are cached (TensorRT engines, ONNX
    Runtime's TensorRT provider caches); default ~/.cache/hypercompile."""
    return Bundle(
        Path(path),
        cache_size=cache_size,
        verify=verify,
        threads=threads,
        device=device,
        ort_pool=ort_pool,
        engine_cache=engine_cache,
    )
