"""ONNX Runtime vs TVM (untuned, llvm for this CPU) on the same bundles, in one run: every
hypernet example at batch 1 and 32, every dynamic zoo model at batch 1; medians of interleaved
rounds, and build times with and without TVM.

    python benchmarks/bench_backends.py [--rounds 30] [--models skipnet_ff,...] [--no-zoo]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import console, fmt_time, machine, measure, table  # noqa: E402

import hypercompile as hc  # noqa: E402

HYPERNETS = {
    "continual": "examples/continual_hypernet/model.py:make",
    "morph": "examples/morph_hypernet/model.py:make",
    "hypnettorch": "examples/hypnettorch_mlp/model.py:make",
}
ZOO = ["ShallowDeep", "SkipNetFF", "SkipNetRNN", "BlockDrop", "IterativeRefine", "TopOneMoE",
       "NestedIfLoopIf"]


def _inputs(bundle: hc.Bundle, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in bundle.inputs:
        shape = [batch if d in ("batch", None) else d for d in spec["shape"]]
        feeds[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds


def run(name: str, ref: str, out: Path, batches: tuple[int, ...], rounds: int, rows: list) -> None:
    t = time.perf_counter()
    hc.build(ref, out=out / "ort", backends=["onnxruntime"], parity_inputs=20)
    ort_s = time.perf_counter() - t
    t = time.perf_counter()
    try:
        path = hc.build(ref, out=out / "both", backends=["onnxruntime", "tvm"], parity_inputs=20)
    except hc.HypercompileError as e:  # report why TVM cannot take this model
        rows.append((name, 1, None, str(e), ort_s, None))
        return
    both_s = time.perf_counter() - t
    bundle = hc.load(path)
    cond = bundle.variants[len(bundle.variants) // 2]
    rng = np.random.default_rng(0)
    for batch in batches:
        pool = [_inputs(bundle, batch, rng) for _ in range(16)]

        def over(backend: str, pool=pool):
            return lambda: [bundle.run(x, backend=backend, **cond) for x in pool]

        stats = measure({"onnxruntime": over("onnxruntime"), "tvm": over("tvm")}, rounds=rounds)
        med = {k: v["median"] / len(pool) for k, v in stats.items()}
        rows.append((name, batch, med["onnxruntime"], med["tvm"], ort_s, both_s - ort_s))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--models", default="", help="comma-separated subset (example or zoo names)")
    ap.add_argument("--no-zoo", action="store_true")
    args = ap.parse_args()
    only = {m for m in args.models.split(",") if m}
    console.print(f"machine: {machine()}")
    rows: list = []
    with tempfile.TemporaryDirectory() as d:
        for name, ref in HYPERNETS.items():
            if not only or name in only:
                run(name, str(ROOT / ref), Path(d) / name, (1, 32), args.rounds, rows)
        for name in [] if args.no_zoo else ZOO:
            if not only or name in only:
                ref = f"{ROOT}/examples/dynamic/zoo.py:{name}"
                run(name, ref, Path(d) / name, (1,), args.rounds, rows)
    t = table(f"ONNX Runtime vs TVM (untuned), median of {args.rounds} interleaved rounds",
              ["model", "batch", "onnxruntime", "tvm", "ort/tvm", "build (ORT only)",
               "+ TVM compile"])
    for name, batch, o, v, ort_s, tvm_s in rows:
        if o is None:
            t.add_row(name, str(batch), "-", f"fails: {v[-60:]}", "-", f"{ort_s:.1f} s", "-")
            continue
        t.add_row(name, str(batch), fmt_time(o), fmt_time(v), f"{o / v:.2f}x", f"{ort_s:.1f} s",
                  f"{tvm_s:.1f} s")
    console.print(t)
    console.print("ort/tvm > 1: TVM is faster. TVM is compiled for this CPU (llvm, host mcpu) "
                  "without tuning; MetaSchedule tuning is not wired in yet.")


if __name__ == "__main__":
    main()
