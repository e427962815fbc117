"""Latency against quality, size or the condition, one point per variant: the median with a
p10-p90 bar, and a Pareto front marked only where differences exceed the noise the profile
measured. matplotlib (the `dev` extra) is imported here only, never by the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.manifest import Manifest
from ..errors import HypercompileError
from ..runtime.fingerprint import describe
from .measure import noise_ms
from .profile import pareto_front

X_AXES = ("auto", "quality", "params", "condition")


def _x_axis(x: str, variants: list) -> str:
    """auto: the model's quality where every variant declares one, else parameters where they
    differ, else the condition itself."""
    if x != "auto":
        return x
    if all(v.quality is not None for v in variants):
        return "quality"
    return "params" if len({v.params for v in variants}) > 1 else "condition"


def profile_points(
    manifest: Manifest, device: str, x: str = "auto", batch: int | None = None
) -> tuple[list[dict[str, Any]], str, int]:
    """Per profiled variant at `batch` (default: the smallest batch profiled), on its fastest
    back end by median: label, x (quality, parameters, or the variant's position for
    "condition"), median, p10 and p90 ms, the noise measured (`noise_ms`), and whether it is on
    the Pareto front (more x and less latency beyond the noise are better; no front on the
    condition axis, which has no better side). Returns (points, x axis, batch)."""
    if x not in X_AXES:
        raise HypercompileError(f"x axis must be one of {', '.join(X_AXES)}, not {x!r}")
    entry = manifest.profile.get(device)
    if entry is None:
        raise HypercompileError(f"the bundle has no profile {device}")
    recs = [(v, entry.variants.get(v.id)) for v in manifest.variants]
    recs = [(v, r) for v, r in recs if r is not None and r.results]
    if not recs:
        raise HypercompileError(f"profile {device} times no variant")
    if batch is None:
        batch = min(int(b) for _, r in recs for res in r.results.values() for b in res)
    x = _x_axis(x, [v for v, _ in recs])
    points = []
    for i, (v, r) in enumerate(recs):
        timed = {be: res[str(batch)] for be, res in r.results.items() if str(batch) in res}
        if not timed or (x == "quality" and v.quality is None):
            continue
        be = min(timed, key=lambda name: timed[name]["median_ms"])
        t = timed[be]
        value = {"quality": v.quality, "params": v.params, "condition": i}[x]
        points.append(
            {
                "label": " ".join(f"{k}={val}" for k, val in v.cond.items()) or v.id,
                "x": float(value or 0),
                "median_ms": t["median_ms"],
                "p10_ms": t["p90_ms"] - t["spread_ms"],
                "p90_ms": t["p90_ms"],
                "noise_ms": noise_ms(t),
                "backend": be,
            }
        )
    front = set()
    if x != "condition":
        xy = [(p["x"], p["median_ms"]) for p in points]
        front = set(pareto_front(xy, [p["noise_ms"] for p in points]))
    for i, p in enumerate(points):
        p["pareto"] = i in front
    return points, x, batch


def plot_profile(
    manifest: Manifest,
    device: str,
    out: str | Path,
    *,
    x: str = "auto",
    batch: int | None = None,
) -> Path:
    """Write a PNG of median latency (p10-p90 bars) against the model's quality, parameters or
    the condition (`x`, see `profile_points`), every variant labelled, the Pareto front drawn
    as a step line through its marked points."""
    try:
        import matplotlib
    except ImportError:
        raise HypercompileError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, x_name, batch = profile_points(manifest, device, x, batch)
    entry = manifest.profile[device]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    try:
        xs = [p["x"] for p in points]
        med = [p["median_ms"] for p in points]
        ax.errorbar(
            xs,
            med,
            yerr=[
                [p["median_ms"] - p["p10_ms"] for p in points],
                [p["p90_ms"] - p["median_ms"] for p in points],
            ],
            fmt="o",
            color="tab:blue",
            capsize=3,
            label="variant: median, bar p10-p90 (fastest back end)",
            zorder=2,
        )
        for p in points:
            ax.annotate(
                f"{p['label']} ({p['backend']})",
                (p["x"], p["median_ms"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=8,
            )
        front = sorted((p for p in points if p["pareto"]), key=lambda p: p["x"])
        if front:
            ax.step(
                [p["x"] for p in front],
                [p["median_ms"] for p in front],
                where="pre",
                color="tab:red",
                linewidth=1.5,
                zorder=1,
            )
            ax.scatter(
                [p["x"] for p in front],
                [p["median_ms"] for p in front],
                s=120,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.5,
                label="Pareto front (beyond the measured noise)",
                zorder=3,
            )
        if x_name == "params" and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        if x_name == "condition":
            ax.set_xticks(xs, [p["label"] for p in points], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(
            {
                "params": "parameters",
                "quality": "quality (declared by the model)",
                "condition": "condition",
            }[x_name]
        )
        ax.set_ylabel(f"latency (ms), batch {batch}")
        ax.set_title(f"{device}: {describe(entry.device)}"[:110], fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
