"""Hypernet deployment benchmark: per example, at batch 1 and 32, medians of
(a) PyTorch eager hypernet + target per call, (b) PyTorch eager target with weights materialized,
(c) the bundle through `Bundle.run` on ONNX Runtime, (d) a bare ONNX Runtime session on the same
materialized graph (weights embedded), (e) whole-graph ONNX of hypernet + target (the naive
export); then build time for 1 vs 50 tasks and bundle bytes vs number of tasks.

    python benchmarks/bench_hypernets.py [--rounds 60] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import console, fmt_time, machine, measure, ratio, table  # noqa: E402

import hypercompile as hc  # noqa: E402
from hypercompile.frontend.loader import resolve_model  # noqa: E402
from hypercompile.frontend.materialize import materialize  # noqa: E402

EXAMPLES = {
    "continual (CNN, task)": "examples/continual_hypernet/model.py:make",
    "morph (width=32)": "examples/morph_hypernet/model.py:make",
    "hypnettorch HMLP->MLP": "examples/hypnettorch_mlp/model.py:make",
}
SCALING = "examples/continual_hypernet/model.py:make_untrained"


def bare_session(bundle: hc.Bundle, variant):
    """An ONNX Runtime session on the variant's graph with its weights embedded: the floor that
    `Bundle.run` is compared against (the runtime's own overhead)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    g = onnx.load(
        str(bundle.path / bundle.manifest.graphs[variant.graph].path), load_external_data=False
    )
    weights = bundle.weights(variant)
    for i, t in enumerate(g.graph.initializer):
        if t.name in weights:
            tensor = numpy_helper.from_array(np.array(weights[t.name]), t.name)
            g.graph.initializer[i].CopyFrom(tensor)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(g.SerializeToString(), so, providers=["CPUExecutionProvider"])


def whole_graph_session(hm, cond, x: torch.Tensor):
    """Hypernet + target exported as one ONNX graph (weights computed inside, every call)."""
    import onnxruntime as ort

    class Whole(torch.nn.Module):
        def forward(self, x):
            return hm.reference(cond, x)

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        prog = torch.onnx.export(
            Whole(),
            (x,),
            dynamo=True,
            input_names=["x"],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        )
    return ort.InferenceSession(
        prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def bench_example(name: str, ref: str, out: Path, rounds: int, rows: list) -> None:
    hm = resolve_model(ref)
    path = hc.build(hm, out=out)
    bundle = hc.load(path)
    conds = bundle.variants
    cond = {"width": 32} if {"width": 32} in conds else conds[len(conds) // 2]
    variant = bundle.select(**cond)
    target = materialize(hm, cond)
    (example,) = hm.example_inputs(cond)
    in_name = bundle.inputs[0]["name"]
    bare = bare_session(bundle, variant)
    try:
        whole = whole_graph_session(hm, cond, example)
        whole_err = ""
    except Exception as e:  # report why the naive export fails rather than hide it
        whole, whole_err = None, f"{type(e).__name__}"
    for batch in (1, 32):
        xt = torch.randn(batch, *example.shape[1:])
        xn = xt.numpy()
        feeds = {in_name: xn}
        fns = {
            "eager hypernet+target": lambda xt=xt: hm.reference(cond, xt),
            "eager materialized": lambda xt=xt: target(xt),
            "bundle (ORT)": lambda feeds=feeds: bundle.run(feeds, **cond),
            "bare ORT": lambda feeds=feeds: bare.run(None, feeds),
        }
        if whole is not None:
            fns["whole-graph ONNX"] = lambda xn=xn: whole.run(None, {"x": xn})
        with torch.no_grad():
            stats = measure(fns, rounds=rounds)
        med = {k: v["median"] for k, v in stats.items()}
        rows.append((name, batch, med, whole_err))


def bench_scaling(rounds_dir: Path, quick: bool) -> tuple[list, list]:
    """Build time (fresh output, same process, exporter warmed up) for 1 vs 50 tasks, and bytes."""
    hc.build(f"{ROOT / SCALING}", out=rounds_dir / "warm", where={"task": [0]})
    times, sizes = [], []
    counts = (1, 10, 50) if not quick else (1, 50)
    for n in counts:
        t = time.perf_counter()
        path = hc.build(
            f"{ROOT / SCALING}", out=rounds_dir / f"n{n}", where={"task": list(range(n))}
        )
        times.append((n, time.perf_counter() - t))
        graph = sum(p.stat().st_size for p in (path / "graphs").iterdir())
        one = (path / "weights/v0000.safetensors").stat().st_size
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        sizes.append((n, total, graph, one, total / (graph + n * one)))
    return times, sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = ap.parse_args()
    rounds = 8 if args.quick else args.rounds
    console.print(f"machine: {machine()}")
    rows: list = []
    with tempfile.TemporaryDirectory() as d:
        for name, ref in EXAMPLES.items():
            bench_example(name, str(ROOT / ref), Path(d) / name.split()[0], rounds, rows)
        times, sizes = bench_scaling(Path(d), args.quick)

    cols = [
        "example",
        "batch",
        "(a) eager hyper+target",
        "(b) eager materialized",
        "(c) bundle ORT",
        "(d) bare ORT",
        "(e) whole-graph ONNX",
        "a/c",
        "b/c",
        "c/d",
        "e/c",
    ]
    t = table(f"per-call latency, median of {rounds} interleaved rounds", cols)
    for name, batch, med, whole_err in rows:
        c = med["bundle (ORT)"]
        whole = med.get("whole-graph ONNX")
        t.add_row(
            name,
            str(batch),
            fmt_time(med["eager hypernet+target"]),
            fmt_time(med["eager materialized"]),
            fmt_time(c),
            fmt_time(med["bare ORT"]),
            fmt_time(whole) if whole else f"fails ({whole_err})",
            ratio(med["eager hypernet+target"], c),
            ratio(med["eager materialized"], c),
            f"{c / med['bare ORT']:.2f}x",
            ratio(whole, c),
        )
    console.print(t)
    t = table("build time (continual example, same architecture)", ["tasks", "build", "vs 1 task"])
    for n, s in times:
        t.add_row(str(n), fmt_time(s), f"{s / times[0][1]:.2f}x")
    console.print(t)
    t = table(
        "bundle bytes vs tasks",
        ["tasks", "bundle", "graph", "one task's weights", "bundle / (graph + n x task)"],
    )
    for n, total, graph, one, r in sizes:
        t.add_row(str(n), f"{total:,}", f"{graph:,}", f"{one:,}", f"{r:.3f}")
    console.print(t)


if __name__ == "__main__":
    main()
