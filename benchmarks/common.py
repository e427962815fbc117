"""Timing helpers shared by the benchmarks: interleaved rounds, medians, a rich table."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(width=160)


def per_call_seconds(fn: Callable[[], Any], target_s: float = 2e-3) -> int:
    """How many calls make one sample of about `target_s` (after a warm-up)."""
    for _ in range(5):
        fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    return max(1, int(target_s / one))


def measure(fns: dict[str, Callable[[], Any]], rounds: int = 60) -> dict[str, dict[str, float]]:
    """Median and p90 seconds per call for each fn, sampled round-robin so that machine noise
    hits every contender alike. A short pause before each sample lets the previous
    contender's spinning worker threads (ONNX Runtime, OpenMP) park, so none pays for another."""
    inner = {k: per_call_seconds(f) for k, f in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            n = inner[k]
            time.sleep(0.02)
            f()
            t = time.perf_counter()
            for _ in range(n):
                f()
            samples[k].append((time.perf_counter() - t) / n)
    out = {}
    for k, s in samples.items():
        s.sort()
        out[k] = {"median": statistics.median(s), "p90": s[int(0.9 * (len(s) - 1))], "n": len(s)}
    return out


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.1f}x"


def machine() -> str:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, torch threads {torch.get_num_threads()}"
    )


def table(title: str, columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    return t
