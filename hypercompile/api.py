"""`hc.profile` and `hc.inspect`: what the CLI's `profile` and `inspect` print, as data (the
CLI prints these dicts under `--json`). Torch-free; profiling imports `onnx` only to count
FLOPs, and a plot imports matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .devtools.measure import DEFAULT_REPEAT, DEFAULT_WARMUP, Progress


def profile(
    path: str | Path,
    *,
    backends: list[str] | None = None,
    batches: Sequence[int] | None = None,
    warmup: int = DEFAULT_WARMUP,
    repeat: int = DEFAULT_REPEAT,
    inputs: str | Path | None = None,
    plot: str | Path | None = None,
    plot_x: str = "auto",
    rpc: str | None = None,
    key: str | None = None,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time every variant of the bundle at `path` here (or on a board through a TVM RPC
    tracker, `rpc="HOST:PORT"` with `key`), store the profile in its manifest under this
    device's key, and return {"bundle", "device" (the key), "description", "profile" (the
    stored entry as JSON), "plot" (the PNG written for `plot`, or None)}. After it,
    `hc.load(path).run(inputs, budget_ms=...)` selects by the stored timings."""
    from .core.manifest import Manifest
    from .devtools.profile import profile as do_profile
    from .runtime.fingerprint import describe

    device, entry = do_profile(
        path,
        backends=backends,
        batches=batches,
        warmup=warmup,
        repeat=repeat,
        inputs=inputs,
        rpc=rpc,
        key=key,
        timeout=timeout,
        progress=progress,
    )
    plot_path = None
    if plot is not None:
        from .devtools.plot import plot_profile

        plot_path = str(plot_profile(Manifest.load(Path(path)), device, plot, x=plot_x))
    return {
        "bundle": str(Path(path).resolve()),
        "device": device,
        "description": describe(entry.device),
        "profile": entry.to_json(),
        "plot": plot_path,
    }


def inspect(path: str | Path) -> dict[str, Any]:
    """A bundle's description as data: producer, target, inputs, outputs, graphs, variants
    (conditions, parameters, bytes, parity), programs, generators, `selectable` (the condition
    keys a budget may choose), stored profiles and this device's profile key."""
    from .runtime import load

    b = load(path)
    m = b.manifest
    data = m.to_json()
    keep = ("producer", "target", "inputs", "outputs", "graphs", "variants", "programs")
    out = {k: data[k] for k in keep}
    out["profile"] = data["profile"]
    out["this_device"] = b.device_key()
    out["weight_bytes"] = {
        "unique": m.weight_bytes,
        "per_variant_sum": sum(v.bytes for v in m.variants),
    }
    out["generators"] = {k: g.to_json() for k, g in m.generators.items()}
    out["weight_dtype"] = m.weight_dtype or "float32"
    out["selectable"] = list(m.selectable)
    return out
