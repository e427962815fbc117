"""Subgraph calls per inference of every DyNN zoo model (examples/dynamic/zoo.py): each model is
built with hypercompile, then its program runs through the ONNX Runtime program runner on random
batch-1 inputs while an observer counts the blocks entered that call a graph. Also prints the
median latency of `Bundle.run` per inference over the same inputs.

    python benchmarks/calls_per_inference.py [--models blockdrop,skipnet_ff] [--inputs 50]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples" / "dynamic"))

from common import console, table  # noqa: E402
from zoo import ZOO  # noqa: E402

import hypercompile as hc  # noqa: E402

ZOO_FILE = ROOT / "examples" / "dynamic" / "zoo.py"


class CallCounter:
    """An Observer counting the blocks a run enters that call a compiled graph."""

    def __init__(self) -> None:
        self.calls = 0

    def enter(self, block: Any, env: dict[str, Any]) -> None:
        if block.graph is not None:
            self.calls += 1

    def decide(self, block: Any, env: dict[str, Any], side: str) -> None:
        pass


def measure_model(name: str, n: int, parity: int, out: Path) -> dict[str, Any]:
    cls = ZOO[name]
    path = hc.build(
        f"{ZOO_FILE}:{cls.__name__}", out=out / name, parity_inputs=parity, allow_untested=True
    )
    bundle = hc.load(path)
    variant = bundle.manifest.variants[0]
    runner = bundle.load_runner(variant, "onnxruntime")
    in_name = bundle.inputs[0]["name"]
    g = torch.Generator().manual_seed(0)
    xs = [np.ascontiguousarray(torch.randn(1, 3, 32, 32, generator=g).numpy()) for _ in range(n)]
    calls = []
    for x in xs:
        c = CallCounter()
        runner.run({in_name: x}, c)
        calls.append(c.calls)
    for x in xs[:5]:
        bundle.run({in_name: x})  # warm
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for x in xs:
            bundle.run({in_name: x})
        times.append((time.perf_counter() - t) / len(xs))
    program = runner.program
    return {
        "model": name,
        "blocks": len(program.blocks),
        "graph_blocks": sum(1 for b in program.blocks.values() if b.graph),
        "calls_mean": float(np.mean(calls)),
        "calls_min": min(calls),
        "calls_max": max(calls),
        "median_ms": statistics.median(times) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--parity-inputs", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(measure_model(name, args.inputs, args.parity_inputs, Path(tmp)))
            console.print(rows[-1])
    t = table(
        f"Subgraph calls per inference (batch 1, {args.inputs} random inputs)",
        ["model", "blocks", "graph blocks", "calls mean", "min", "max", "median ms"],
    )
    for r in rows:
        t.add_row(
            r["model"],
            str(r["blocks"]),
            str(r["graph_blocks"]),
            f"{r['calls_mean']:.2f}",
            str(r["calls_min"]),
            str(r["calls_max"]),
            f"{r['median_ms']:.3f}",
        )
    console.print(t)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
