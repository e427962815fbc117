"""What profiling measures and on what: timing statistics, memory, FLOPs, input pools, and the
per-variant records a profile keeps. Shared by local profiling (`profile.py`) and timing on a
board through TVM RPC (`remote.py`). Torch-free; `onnx` is imported only to count FLOPs."""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.manifest import ProfiledVariant, Variant
from ..errors import InputError, ProfileError
from ..runtime.fingerprint import read_text

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


def rss_bytes() -> int:
    text = read_text("/proc/self/statm")
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE") if text else 0


def reset_peak() -> bool:
    """Reset the process's peak-RSS mark (Linux `clear_refs` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
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


def variant_specs(bundle: Bundle, variant: Variant) -> list[dict[str, Any]]:
    """A variant's input specs, as plain dicts."""
    return [s.to_json() for s in bundle.manifest.io(variant)[0]]


def noise_ms(rec: dict[str, Any]) -> float:
    """The noise one timing measured: how far the medians of its rounds moved (`drift_ms`), or
    its spread (p90 - p10) where a profile did not record the drift."""
    drift = rec.get("drift_ms")
    return float(drift if drift is not None else rec.get("spread_ms") or 0.0)


def best_backend(results: dict[str, dict[str, dict]], order: Sequence[str] = ()) -> str | None:
    """The back end a variant runs on by default: the first of `order` (the target's back ends,
    in preference order) that was timed, unless another's p90 is lower by more than the noise
    either measured (`noise_ms`); compared at the smallest batch every timed back end has."""
    if not results:
        return None
    common = set.intersection(*(set(map(int, r)) for r in results.values()))
    batch = str(min(common) if common else min(int(b) for r in results.values() for b in r))
    timed = {be: r[batch] for be, r in results.items() if batch in r}
    if not timed:
        return None
    fastest = min(timed, key=lambda be: timed[be]["p90_ms"])
    default = next((be for be in order if be in timed), None)
    if default is None or default == fastest:
        return fastest
    d, f = timed[default], timed[fastest]
    if d["p90_ms"] - f["p90_ms"] > max(noise_ms(d), noise_ms(f)):
        return fastest
    return default


def profiled_variant(v: Variant) -> ProfiledVariant:
    """An empty profile record for variant `v`."""
    return ProfiledVariant(cond=dict(v.cond), params=v.params, results={}, quality=v.quality)
