"""Profiling on the device: fingerprint the machine, time every variant on every back end, count
parameters and FLOPs, and keep the results in the manifest under the device's key.

Torch-free. `onnx` (FLOP counting) is imported only to count FLOPs and `tvm` only for TVM
artifacts; remote boards are timed through a TVM RPC tracker by `devtools/remote.py`.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import re
import resource
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import ir
from ..core.manifest import Manifest, Profile, ProfiledVariant, Variant
from ..core.targets import host_arch
from ..errors import InputError, ProfileError
from ..runtime.fingerprint import fingerprint_key, local_fingerprint, read_text
from ..runtime.runners import get_runner_factory

if TYPE_CHECKING:
    from ..runtime.bundle import Bundle

Progress = Callable[[str, int, int], None]
DEFAULT_WARMUP = 10
DEFAULT_REPEAT = 100
POOL_SIZE = 32  # distinct random inputs the timed runs cycle through

# -- statistics, memory, FLOPs ---------------------------------------------------------------


ROUNDS = 10  # timed runs are spread over this many rounds
ROUND_PAUSE_S = 0.002


def summarize(times_s: Sequence[float]) -> dict[str, Any]:
    """Latency statistics in milliseconds. `spread_ms` is p90 - p10: the width of the middle
    80 % of runs, the noise a later profile's median should stay within."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ProfileError("no timed runs")
    p10, p25, p50, p75, p90, p99 = np.percentile(ms, [10, 25, 50, 75, 90, 99])
    r = lambda x: round(float(x), 6)  # noqa: E731
    return {
        "runs": int(ms.size),
        "median_ms": r(p50),
        "p90_ms": r(p90),
        "p99_ms": r(p99),
        "mean_ms": r(ms.mean()),
        "std_ms": r(ms.std()),
        "min_ms": r(ms.min()),
        "max_ms": r(ms.max()),
        "spread_ms": r(p90 - p10),
        "iqr_ms": r(p75 - p25),
    }


def _rss() -> int:
    text = read_text("/proc/self/statm")
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE") if text else 0


def _reset_peak() -> bool:
    """Reset the process's peak-RSS mark (Linux `clear_refs` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    m = re.search(r"^VmHWM:\s*(\d+) kB", read_text("/proc/self/status") or "", re.M)
    if m:
        return int(m.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def graph_macs(model: bytes, batch: int) -> int | None:
    """Multiply-accumulates of the MatMul, Gemm, Conv and ConvTranspose nodes of an ONNX graph
    at `batch` (every symbolic input dimension set to it), from ONNX shape inference. Other ops
    are not counted. None when `onnx` is not installed or a counted node's shape is unknown."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None
    m = onnx.load_model_from_string(model)
    for vi in m.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    for vi in m.graph.output:
        vi.type.tensor_type.ClearField("shape")
    try:
        g = shape_inference.infer_shapes(m).graph
    except Exception:  # onnx raises its own error types
        return None
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim
            ]

    def numel(name: str) -> int | None:
        s = shapes.get(name)
        return None if s is None or any(d is None for d in s) else int(np.prod(s, dtype=np.int64))

    total = 0
    for node in g.node:
        op = node.op_type
        if op not in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
            continue
        a, w = (shapes.get(n) for n in node.input[:2])
        y = numel(node.output[0])
        if op == "ConvTranspose":
            y = numel(node.input[0])
        if a is None or w is None or y is None or any(d is None for d in [*a, *w]):
            return None
        if op == "MatMul":
            k = a[-1]
        elif op == "Gemm":
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
        else:
            k = int(np.prod(w[1:], dtype=np.int64))
        total += int(y) * int(k)
    return total


# -- inputs ----------------------------------------------------------------------------------


def _sample_rows(spec: dict[str, Any], batch: int) -> int:
    shape = spec["shape"]
    if "batch" in shape:
        return batch
    return int(shape[0]) if shape and isinstance(shape[0], int) else 1


def variant_batch(specs: list[dict[str, Any]], batch: int) -> int | None:
    """The batch a variant runs at: `batch` where its inputs have a dynamic batch dimension,
    else the fixed leading dimension (None when `batch` asks for another size)."""
    if any("batch" in s["shape"] for s in specs):
        return batch
    fixed = _sample_rows(specs[0], batch) if specs else 1
    return fixed


def random_inputs(specs: list[dict[str, Any]], batch: int, n: int, seed: int = 0) -> list[dict]:
    """`n` random feeds for the input specs at `batch` (normal floats, 0/1 integers, coin-flip
    booleans): different inputs, so DyNN programs take their different paths."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        feeds = {}
        for spec in specs:
            shape = [batch if d == "batch" else int(d) for d in spec["shape"]]
            dtype = np.dtype(spec["dtype"])
            if dtype.kind == "f":
                arr = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                arr = rng.random(shape) < 0.5
            else:
                arr = rng.integers(0, 2, shape).astype(dtype)
            feeds[spec["name"]] = arr
        pool.append(feeds)
    return pool


def folder_inputs(folder: Path, specs: list[dict[str, Any]], batch: int) -> list[dict]:
    """Feeds from `folder/NAME.npy`, one file per input whose first axis stacks samples; they
    are cut into consecutive chunks of the variant's batch."""
    arrays = {}
    for spec in specs:
        path = Path(folder) / f"{spec['name']}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"--inputs: cannot read {path}: {e}") from None
        if arr.dtype.name != spec["dtype"] or arr.ndim != len(spec["shape"]):
            raise InputError(
                f"--inputs: {path.name} is {arr.dtype.name}{list(arr.shape)}, the input wants "
                f"{spec['dtype']}{spec['shape']} (first axis: samples)"
            )
        arrays[spec["name"]] = arr
    rows = _sample_rows(specs[0], batch)
    count = min(a.shape[0] for a in arrays.values()) // rows
    if count < 1:
        raise InputError(f"--inputs: need at least {rows} sample(s) per file in {folder}")
    return [{n: a[i * rows : (i + 1) * rows] for n, a in arrays.items()} for i in range(count)]


# -- profiling -------------------------------------------------------------------------------


def _path_label(trace: list[int]) -> str:
    label = ">".join(f"b{b}" for b in trace)
    return label if len(label) <= 200 else label[:190] + f"...({len(trace)} blocks)"


class Flops:
    """2 x MACs per graph and batch, counted once."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.cache: dict[tuple[str, int], int | None] = {}

    def graph(self, gid: str, batch: int) -> int | None:
        if (gid, batch) not in self.cache:
            graph = self.bundle.manifest.graphs[gid]
            macs = graph_macs(self.bundle.read(graph.path), batch)
            self.cache[gid, batch] = None if macs is None else 2 * macs
        return self.cache[gid, batch]


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
    rss0 = _rss()
    peak_ok = _reset_peak()
    runner = bundle.load_runner(variant, backend)
    is_program = variant.program is not None
    times, traces, medians, counts = _time_runner(runner, pool, warmup, repeat, is_program)
    rec = summarize(times)
    # how far the medians of rounds taken at different moments moved: noise that the spread
    # of single runs misses (load from elsewhere comes and goes)
    rec["drift_ms"] = round((max(medians) - min(medians)) * 1e3, 6)
    # peak: the high-water RSS while loading and running, above the RSS before (sessions,
    # bound weights, arenas, activations); process-level, so approximate
    rec["peak_mem_mb"] = round((_peak_rss() - rss0) / 2**20, 3) if peak_ok else None
    rec["rss_growth_mb"] = round((_rss() - rss0) / 2**20, 3)
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
    return rec


def variant_specs(bundle: Bundle, variant: Variant) -> list[dict[str, Any]]:
    """A variant's input specs, as plain dicts."""
    return [s.to_json() for s in bundle.manifest.io(variant)[0]]


def best_backend(results: dict[str, dict[str, dict]]) -> str | None:
    """The back end with the lowest p90 at the smallest batch every profiled back end has."""
    if not results:
        return None
    common = set.intersection(*(set(map(int, r)) for r in results.values()))
    batch = str(min(common) if common else min(int(b) for r in results.values() for b in r))
    timed = {be: r[batch]["p90_ms"] for be, r in results.items() if batch in r}
    return min(timed, key=timed.__getitem__) if timed else None


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
        entry.best_backend = best_backend(entry.results)
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


def profiled_variant(v: Variant) -> ProfiledVariant:
    """An empty profile record for variant `v`."""
    return ProfiledVariant(cond=dict(v.cond), params=v.params, results={}, quality=v.quality)


# -- storing ---------------------------------------------------------------------------------


def merge_profile(old: Profile | None, new: Profile) -> Profile:
    """A new profile of the same device keeps the old one's results for back ends, batches and
    variants it did not time again."""
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
        v.best_backend = best_backend(v.results)
    return merged


def store_profile(root: str | Path, entry: Profile) -> str:
    """Merge `entry` into the manifest's `profile` under its device key and rewrite the manifest
    atomically. Only the manifest changes, so every file hash stays valid."""
    root = Path(root).resolve()
    manifest = Manifest.load(root)
    key = fingerprint_key(entry.device)
    manifest.profile[key] = merge_profile(manifest.profile.get(key), entry)
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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, where x is better higher (parameters,
    quality) and y better lower (latency); sorted by y. Equal points are all kept."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (xj >= x and yj <= y) and (xj > x or yj < y) for j, (xj, yj) in enumerate(points)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))
