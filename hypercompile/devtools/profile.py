"""Profiling on the device: fingerprint the machine, time every variant on every back end, count
parameters and FLOPs, and keep the results in the manifest under the device's key.

Torch-free. `onnx` (FLOP counting) is imported only to count FLOPs and `tvm` only for TVM
artifacts; remote boards are timed through a TVM RPC tracker by `devtools/remote.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import ir
from ..core.manifest import Manifest, Profile, ProfiledVariant, Variant
from ..core.targets import host_arch
from ..errors import ProfileError
from ..runtime.fingerprint import fingerprint_key, local_fingerprint
from ..runtime.runners import get_runner_factory
from .measure import (
    DEFAULT_REPEAT,
    DEFAULT_WARMUP,
    POOL_SIZE,
    ROUND_PAUSE_S,
    ROUNDS,
    Flops,
    Progress,
    best_backend,
    folder_inputs,
    peak_rss,
    profiled_variant,
    random_inputs,
    reset_peak,
    rss_bytes,
    summarize,
    variant_batch,
    variant_specs,
)

if TYPE_CHECKING:
    from ..runtime.bundle import Bundle

SWITCH_SAMPLES = 3  # fresh runners timed per variant for its switch cost

# -- profiling -------------------------------------------------------------------------------


def _path_label(trace: list[int]) -> str:
    label = ">".join(f"b{b}" for b in trace)
    return label if len(label) <= 200 else label[:190] + f"...({len(trace)} blocks)"


class _Path(ir.Trace):
    """A path trace that also counts decisions."""

    def __init__(self, coverage: ir.Coverage):
        super().__init__()
        self.decide = coverage.decide  # type: ignore[method-assign]


def _time_runner(runner: Any, pool: list[dict], warmup: int, repeat: int, program: bool):
    """Time `repeat` runs in up to ROUNDS rounds with a short pause before each (spinning worker
    threads park, and a burst of load from elsewhere hits one round, not the whole profile).
    Returns the times, the DyNN traces, each round's median and the DyNN's branch counts."""
    for i in range(warmup):
        runner.run(pool[i % len(pool)])
    times: list[float] = []
    traces: list[list[int]] = []
    coverage = ir.Coverage()
    clock = time.perf_counter
    rounds = max(1, min(ROUNDS, repeat // 10))
    medians: list[float] = []
    for r in range(rounds):
        time.sleep(ROUND_PAUSE_S)
        start = len(times)
        for i in range(r * repeat // rounds, (r + 1) * repeat // rounds):
            feeds = pool[i % len(pool)]
            if program:
                trace = _Path(coverage)
                t = clock()
                runner.run(feeds, trace)
                times.append(clock() - t)
                traces.append(trace.blocks)
            else:
                t = clock()
                runner.run(feeds)
                times.append(clock() - t)
        medians.append(float(np.median(times[start:])))
    return times, traces, medians, coverage.counts


def profile_variant(
    bundle: Bundle,
    variant: Variant,
    backend: str,
    batch: int,
    pool: list[dict],
    warmup: int,
    repeat: int,
    flops: Flops,
) -> dict[str, Any]:
    """Load a fresh runner for one variant on one back end, warm it up, time `repeat` runs and
    measure what loading and running it added to the process's memory. An artifact the build
    machine could not check is checked here first (the bundle's stored PyTorch answers): a
    library that answers wrongly on this device gets no profile."""
    rss0 = rss_bytes()
    peak_ok = reset_peak()
    runner = bundle.load_runner(variant, backend)
    is_program = variant.program is not None
    times, traces, medians, counts = _time_runner(runner, pool, warmup, repeat, is_program)
    rec = summarize(times)
    # how far the medians of rounds taken at different moments moved: noise that the spread
    # of single runs misses (load from elsewhere comes and goes)
    rec["drift_ms"] = round((max(medians) - min(medians)) * 1e3, 6)
    # peak: the high-water RSS while loading and running, above the RSS before (sessions,
    # bound weights, arenas, activations); process-level, so approximate
    rec["peak_mem_mb"] = round((peak_rss() - rss0) / 2**20, 3) if peak_ok else None
    rec["rss_growth_mb"] = round((rss_bytes() - rss0) / 2**20, 3)
    if not is_program:
        rec["flops"] = flops.graph(variant.graph, batch)  # type: ignore[arg-type]
    else:
        host = bundle.manifest.programs[variant.program].host  # type: ignore[index]
        graph_of = {b.id: b.graph for b in host.blocks.values()}
        by_path: dict[str, list[float]] = {}
        path_flops: dict[str, int | None] = {}
        for trace, t in zip(traces, times):
            label = _path_label(trace)
            by_path.setdefault(label, []).append(t)
            if label not in path_flops:
                per_block = [flops.graph(graph_of[b], batch) for b in trace if graph_of.get(b)]
                path_flops[label] = None if None in per_block else int(sum(per_block))  # type: ignore[arg-type]
        rec["paths"] = [
            {
                "path": label,
                "count": len(ts),
                "share": round(len(ts) / len(times), 4),
                "flops": path_flops[label],
                **{k: v for k, v in summarize(ts).items() if k in ("median_ms", "p90_ms")},
            }
            for label, ts in sorted(by_path.items(), key=lambda kv: -len(kv[1]))
        ]
        rec["branches"] = ir.source_coverage(host, counts)
        known = [p for p in rec["paths"] if p["flops"] is not None]
        rec["flops"] = (
            int(round(sum(p["flops"] * p["count"] for p in known) / len(times)))
            if len(known) == len(rec["paths"])
            else None
        )
    rec["gflops_per_s"] = (
        round(rec["flops"] / (rec["median_ms"] * 1e-3) / 1e9, 4)
        if rec["flops"] and rec["median_ms"] > 0
        else None
    )
    del runner
    gc.collect()
    rec["switch_ms"] = switch_ms(bundle, variant, backend, pool[0])
    return rec


def switch_ms(bundle: Bundle, variant: Variant, backend: str, feeds: dict) -> float:
    """The first call on a condition whose runner is not loaded (a switch): binding its weights
    (running its generator first, for generated weights; the generator's session stays warm)
    and one call; the median of SWITCH_SAMPLES fresh runners."""
    times = []
    for _ in range(SWITCH_SAMPLES):
        t = time.perf_counter()
        runner = bundle.load_runner(variant, backend)
        runner.run(feeds)
        times.append(time.perf_counter() - t)
        del runner
    return round(float(np.median(times)) * 1e3, 6)


def _backends_for(bundle: Bundle, requested: list[str] | None) -> list[str]:
    present = sorted({be for v in bundle.manifest.variants for be in v.artifacts})
    if not requested or requested == ["auto"]:
        return present
    missing = [b for b in requested if b not in present]
    if missing:
        raise ProfileError(
            f"the bundle has no {', '.join(missing)} artifacts (it has {', '.join(present)})"
        )
    return list(requested)


def _runnable_backends(bundle: Bundle, backends: list[str] | None) -> tuple[list[str], list]:
    """The back ends to time here, and notes on those skipped (not installed, built for
    another machine); a back end asked for by name that cannot run here is an error."""
    names = _backends_for(bundle, backends)
    notes: list[str] = []
    for name in list(names):
        reason = get_runner_factory(name).available()
        if reason:
            if backends and backends != ["auto"]:
                raise ProfileError(reason)
            names.remove(name)
            notes.append(f"{name} skipped: {reason}")
    if not names:
        raise ProfileError("no back end of this bundle can run here: " + "; ".join(notes))
    here = host_arch()
    if bundle.target.arch != here:
        kept = [n for n in names if n == "onnxruntime"]
        notes += [f"{n} skipped: built for {bundle.target.arch}" for n in names if n not in kept]
        names = kept
        if not names:
            raise ProfileError(
                f"the bundle's artifacts were built for {bundle.target.arch}; this machine is "
                f"{here}: profile on the device (or through --rpc)"
            )
    return names, notes


def profile_local(
    bundle: Bundle,
    *,
    backends: list[str] | None = None,
    batches: Sequence[int] | None = None,
    warmup: int = DEFAULT_WARMUP,
    repeat: int = DEFAULT_REPEAT,
    inputs: str | Path | None = None,
    progress: Progress | None = None,
) -> Profile:
    """Time every variant of `bundle` on every back end present (or `backends`; `["auto"]`
    means all of them, recording the fastest per variant) at each of `batches` (default: 1 for
    a dynamic batch, else the inputs' fixed batch). Returns the profile entry for this device."""
    if warmup < 0 or repeat < 1:
        raise ProfileError("--warmup must be >= 0 and --repeat >= 1")
    names, notes = _runnable_backends(bundle, backends)
    wanted = sorted(set(batches or [1]))
    if any(b < 1 for b in wanted):
        raise ProfileError("--batch must be >= 1")
    jobs = []
    for v in bundle.manifest.variants:
        specs = variant_specs(bundle, v)
        for b in sorted({variant_batch(specs, b) for b in wanted}):
            for be in names:
                if be in v.artifacts:
                    jobs.append((v, be, b, specs))
    report = progress or (lambda stage, done, total: None)
    for be in names:  # one-time process set-up (ONNX Runtime's environment, TVM) is not
        # charged to the first variant's memory
        first = next((v for v, name, _, _ in jobs if name == be), None)
        if first is not None:
            bundle.load_runner(first, be)
    gc.collect()
    flops = Flops(bundle)
    variants: dict[str, ProfiledVariant] = {}
    pools: dict[tuple[str, int], list[dict]] = {}
    for i, (v, be, b, specs) in enumerate(jobs):
        report("profile", i, len(jobs))
        key = (json.dumps(specs, sort_keys=True), b)
        if key not in pools:
            pools[key] = (
                folder_inputs(Path(inputs), specs, b)
                if inputs is not None
                else random_inputs(specs, b, POOL_SIZE)
            )
        rec = profile_variant(bundle, v, be, b, pools[key], warmup, repeat, flops)
        entry = variants.setdefault(v.id, profiled_variant(v))
        entry.results.setdefault(be, {})[str(b)] = rec
    report("profile", len(jobs), len(jobs))
    for entry in variants.values():
        entry.best_backend = best_backend(entry.results, bundle.target.backends)
    return Profile(
        device=local_fingerprint(),
        source="local",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings={
            "warmup": warmup,
            "repeat": repeat,
            "batches": wanted,
            "inputs": str(inputs) if inputs is not None else "random",
            "auto": not backends or backends == ["auto"],
        },
        notes=notes,
        variants=variants,
    )


# -- storing ---------------------------------------------------------------------------------


def merge_profile(old: Profile | None, new: Profile, order: Sequence[str] = ()) -> Profile:
    """A new profile of the same device keeps the old one's results for back ends, batches and
    variants it did not time again (`order`: the target's back ends, see `best_backend`)."""
    if old is None or old.device != new.device:
        return new
    merged = copy.deepcopy(new)
    for vid, old_v in old.variants.items():
        if old_v.cond != merged.variants.get(vid, old_v).cond:
            continue
        v = merged.variants.setdefault(vid, copy.deepcopy(old_v))
        for be, by_batch in old_v.results.items():
            for b, rec in by_batch.items():
                v.results.setdefault(be, {}).setdefault(b, rec)
        v.best_backend = best_backend(v.results, order)
    return merged


def _graph_hash(m: Manifest, gid: str) -> str | None:
    graph = m.graphs.get(gid)
    return None if graph is None else m.files.get(graph.path)


def _identity(m: Manifest, v: Variant) -> tuple[str, dict[str, str]]:
    """What a variant's timings depend on: its condition, target, graphs, host program,
    weights and generator (one digest), and per back end its artifacts' hashes."""
    gen = m.generator_of(v)
    parts = {
        "cond": v.cond,
        "target": m.target.to_json(),
        "weight_dtype": m.weight_dtype,
        "weights": v.weights,
        "generated": v.generated,
        "graphs": {gid: _graph_hash(m, gid) for gid in m.graphs_of(v)},
        "program": m.programs[v.program].host.to_json() if v.program else None,
        "generator": None if gen is None else gen.to_json(),
        "generator_graph": None if gen is None else _graph_hash(m, gen.graph),
    }
    base = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    arts = {
        be: json.dumps([m.files.get(a) for a in (art if isinstance(art, list) else [art])])
        for be, art in v.artifacts.items()
    }
    return base, arts


def carry_profiles(old: Manifest, new: Manifest) -> int:
    """Copy into `new` (a rebuild) the timings `old` holds of every variant whose condition,
    graphs, weights and artifacts did not change (per back end: only those whose artifacts
    are byte for byte the same), under the same device keys. Returns how many variant
    records were kept."""
    by_identity = {}
    for v in new.variants:
        base, arts = _identity(new, v)
        by_identity[base] = (v, arts)
    old_variants = {v.id: v for v in old.variants}
    kept = 0
    for key, entry in old.profile.items():
        variants: dict[str, ProfiledVariant] = {}
        for vid, rec in entry.variants.items():
            ov = old_variants.get(vid)
            if ov is None or rec.cond != ov.cond:
                continue
            base, old_arts = _identity(old, ov)
            match = by_identity.get(base)
            if match is None:
                continue
            nv, new_arts = match
            results = {
                be: copy.deepcopy(r)
                for be, r in rec.results.items()
                if be in new_arts and old_arts.get(be) == new_arts[be]
            }
            if not results:
                continue
            variants[nv.id] = dataclasses.replace(
                copy.deepcopy(rec),
                cond=dict(nv.cond),
                params=nv.params,
                quality=nv.quality,
                results=results,
                best_backend=best_backend(results, new.target.backends),
            )
        if variants:
            new.profile[key] = dataclasses.replace(copy.deepcopy(entry), variants=variants)
            kept += len(variants)
    return kept


def store_profile(root: str | Path, entry: Profile) -> str:
    """Merge `entry` into the manifest's `profile` under its device key and rewrite the manifest
    atomically. Only the manifest changes, so every file hash stays valid."""
    root = Path(root).resolve()
    manifest = Manifest.load(root)
    key = fingerprint_key(entry.device)
    manifest.profile[key] = merge_profile(
        manifest.profile.get(key), entry, manifest.target.backends
    )
    manifest.dump(root)
    return key


def profile(
    path: str | Path,
    *,
    backends: list[str] | None = None,
    batches: Sequence[int] | None = None,
    warmup: int = DEFAULT_WARMUP,
    repeat: int = DEFAULT_REPEAT,
    inputs: str | Path | None = None,
    rpc: str | None = None,
    key: str | None = None,
    timeout: float = 60.0,
    progress: Progress | None = None,
    store: bool = True,
) -> tuple[str, Profile]:
    """Profile the bundle at `path` here, or on the board a TVM RPC tracker at `rpc`
    (HOST:PORT) lends for `key`; store the result in its manifest. Returns (device key, entry)."""
    from ..runtime.bundle import load

    bundle = load(path, cache_size=1)
    common = dict(batches=batches, warmup=warmup, repeat=repeat, inputs=inputs, progress=progress)
    if rpc:
        from .remote import profile_remote

        if not key:
            raise ProfileError("--rpc needs --key (the device key the board registered with)")
        entry = profile_remote(bundle, rpc, key, backends=backends, timeout=timeout, **common)
    else:
        entry = profile_local(bundle, backends=backends, **common)
    device = fingerprint_key(entry.device)
    if store:
        device = store_profile(bundle.path, entry)
        entry = Manifest.load(bundle.path).profile[device]
    return device, entry


def pareto_front(
    points: Sequence[tuple[float, float]], noise: Sequence[float] | None = None
) -> list[int]:
    """Indices of the points no other point dominates, where x is better higher (parameters,
    quality) and y better lower (latency); sorted by y. With `noise` (per point, in y's unit),
    a latency difference counts only beyond the larger noise of the two points: j dominates i
    when it has at least i's x, is not slower beyond the noise, and has more x or is faster
    beyond the noise. Equal points are all kept."""
    tol = list(noise) if noise is not None else [0.0] * len(points)
    front = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for j, (xj, yj) in enumerate(points):
            t = max(tol[i], tol[j])
            if j != i and xj >= x and yj <= y + t and (xj > x or yj < y - t):
                dominated = True
                break
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))
