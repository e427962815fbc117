"""Latency against size or quality, one point per variant, with the Pareto front marked.
matplotlib (the `dev` extra) is imported here only, never by the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import HypercompileError
from ..runtime.fingerprint import describe
from .profile import pareto_front


def profile_points(
    manifest: dict[str, Any], device: str, x: str = "params", batch: int | None = None
) -> tuple[list[dict[str, Any]], str, int]:
    """Per profiled variant: label, x (parameters or quality), p90 ms of its fastest back end at
    `batch` (default: the smallest batch profiled), that back end, and whether it is on the
    Pareto front (more x and less latency are better). Returns (points, x name, batch)."""
    entry = (manifest.get("profile") or {}).get(device)
    if not entry:
        raise HypercompileError(f"the bundle has no profile {device}")
    recs = [(v, entry["variants"].get(v["id"])) for v in manifest["variants"]]
    recs = [(v, r) for v, r in recs if r and r.get("results")]
    if not recs:
        raise HypercompileError(f"profile {device} times no variant")
    if batch is None:
        batch = min(int(b) for _, r in recs for res in r["results"].values() for b in res)
    if x == "auto":
        x = "quality" if all(v.get("quality") is not None for v, _ in recs) else "params"
    points = []
    for v, r in recs:
        timed = {
            be: res[str(batch)]["p90_ms"] for be, res in r["results"].items() if str(batch) in res
        }
        if not timed or (x == "quality" and v.get("quality") is None):
            continue
        be = min(timed, key=timed.__getitem__)
        label = " ".join(f"{k}={val}" for k, val in v["cond"].items()) or v["id"]
        points.append({"label": label, "x": float(v[x] or 0), "p90_ms": timed[be], "backend": be})
    front = set(pareto_front([(p["x"], p["p90_ms"]) for p in points]))
    for i, p in enumerate(points):
        p["pareto"] = i in front
    return points, x, batch


def plot_profile(
    manifest: dict[str, Any],
    device: str,
    out: str | Path,
    *,
    x: str = "params",
    batch: int | None = None,
) -> Path:
    """Write a PNG of p90 latency against parameters (or quality), every variant labelled, the
    Pareto front drawn as a step line through its marked points (the edge of what it dominates).
    `x`: "params", "quality" (declared by the model), or "auto" (quality where every variant
    declares one)."""
    try:
        import matplotlib
    except ImportError:
        raise HypercompileError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, x_name, batch = profile_points(manifest, device, x, batch)
    entry = manifest["profile"][device]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    try:
        ax.scatter(
            [p["x"] for p in points],
            [p["p90_ms"] for p in points],
            s=36,
            color="tab:blue",
            label="variant (fastest back end)",
            zorder=2,
        )
        for p in points:
            ax.annotate(
                f"{p['label']} ({p['backend']})",
                (p["x"], p["p90_ms"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
        front = sorted((p for p in points if p["pareto"]), key=lambda p: p["x"])
        if front:
            ax.step(
                [p["x"] for p in front],
                [p["p90_ms"] for p in front],
                where="pre",
                color="tab:red",
                linewidth=1.5,
                zorder=1,
            )
            ax.scatter(
                [p["x"] for p in front],
                [p["p90_ms"] for p in front],
                s=120,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.5,
                label="Pareto front",
                zorder=3,
            )
        xs = [p["x"] for p in points]
        if x_name == "params" and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("parameters" if x_name == "params" else "quality (declared by the model)")
        ax.set_ylabel(f"p90 latency (ms), batch {batch}")
        ax.set_title(f"{device}: {describe(entry.get('device') or {})}"[:110], fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
