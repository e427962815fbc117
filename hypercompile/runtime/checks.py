"""Numerical checks against PyTorch's answers, torch-free: at build time for every artifact that
runs on the build machine, and on the device, at first use, for those that only run there."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ParityError


def parity(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[float, float]:
    """(max abs error, max abs error / max finite |want|) over all outputs; inf when the
    number of outputs, shapes, or the positions of NaN or infinities differ."""
    max_abs, max_rel = 0.0, 0.0
    if len(got) != len(want):
        return float("inf"), float("inf")
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return float("inf"), float("inf")
        if g.dtype.kind == "b" or w.dtype.kind in "biu":
            err = float(np.max(g != w)) if g.size else 0.0
            max_abs, max_rel = max(max_abs, err), max(max_rel, err)
            continue
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        # NaN and infinities must sit at the same positions (with the same sign); the rest is
        # compared by value, relative to the largest finite magnitude of PyTorch's answer
        same_special = (
            np.array_equal(np.isnan(g64), np.isnan(w64))
            and np.array_equal(np.isposinf(g64), np.isposinf(w64))
            and np.array_equal(np.isneginf(g64), np.isneginf(w64))
        )
        if not same_special:
            return float("inf"), float("inf")
        finite = np.isfinite(w64)
        d = np.abs(np.where(finite, g64, 0.0) - np.where(finite, w64, 0.0))
        a = float(d.max()) if d.size else 0.0
        scale = float(np.abs(w64[finite]).max()) if finite.any() else 0.0
        max_abs = max(max_abs, a)
        max_rel = max(max_rel, a / scale if scale > 0 else (0.0 if a == 0 else float("inf")))
    return max_abs, max_rel


def pack_checks(
    inputs: list[dict[str, np.ndarray]], expected: list[list[np.ndarray]]
) -> dict[str, np.ndarray]:
    """Check cases as one flat tensor dict (`in.<case>.<name>`, `out.<case>.<k>`)."""
    flat: dict[str, np.ndarray] = {}
    for i, (feeds, want) in enumerate(zip(inputs, expected)):
        for name, x in feeds.items():
            flat[f"in.{i}.{name}"] = np.ascontiguousarray(x)
        for k, y in enumerate(want):
            flat[f"out.{i}.{k}"] = np.ascontiguousarray(y)
    return flat


def unpack_checks(
    flat: dict[str, np.ndarray],
) -> list[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
    cases: dict[int, tuple[dict[str, np.ndarray], dict[int, np.ndarray]]] = {}
    for key, arr in flat.items():
        kind, idx, name = key.split(".", 2)
        feeds, outs = cases.setdefault(int(idx), ({}, {}))
        if kind == "in":
            feeds[name] = arr
        else:
            outs[int(name)] = arr
    return [(f, [o[k] for k in sorted(o)]) for _, (f, o) in sorted(cases.items())]


def run_checks(
    runner: Any,
    cases: list[tuple[dict[str, np.ndarray], list[np.ndarray]]],
    rtol: float,
    what: str,
) -> dict[str, float]:
    """Run every case through `runner`; raise ParityError naming `what` past `rtol`."""
    worst_abs, worst_rel = 0.0, 0.0
    for feeds, want in cases:
        a, r = parity(runner.run(feeds), want)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
    if not worst_rel <= rtol:
        raise ParityError(
            f"{what}: max rel error {worst_rel:.3g} (max abs {worst_abs:.3g}) on this device "
            f"exceeds tolerance {rtol:g} against PyTorch; the artifact must not be used here"
        )
    return {"max_abs": worst_abs, "max_rel": worst_rel, "inputs": len(cases), "rtol": rtol}
