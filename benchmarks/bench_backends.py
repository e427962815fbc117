"""ONNX Runtime vs TVM untuned vs TVM tuned (llvm for this CPU) in one run: every hypernet
example at batch 1 and 32, every dynamic zoo model at batch 1; medians of interleaved rounds,
and build times: ORT-only build, what TVM's compile adds, and MetaSchedule tuning time.

    python benchmarks/bench_backends.py [--rounds 30] [--tune-trials 32] [--models morph,...]
                                        [--no-zoo]

`--tune-trials 0` skips the tuned column.
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
# dynamic networks nobody here wrote for the compiler (the tuning check's conv DyNN)
HELDOUT = {"exit_cnn": "benchmarks/heldout_exit_cnn.py:ExitCNN"}
ZOO = [
    "ShallowDeep",
    "SkipNetFF",
    "SkipNetRNN",
    "BlockDrop",
    "IterativeRefine",
    "TopOneMoE",
    "NestedIfLoopIf",
]


def _inputs(bundle: hc.Bundle, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in bundle.inputs:
        shape = [batch if d in ("batch", None) else d for d in spec["shape"]]
        feeds[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def run(
    name: str, ref: str, out: Path, batches: tuple[int, ...], rounds: int, trials: int, rows: list
) -> None:
    t = time.perf_counter()
    hc.build(ref, out=out / "ort", backends=["onnxruntime"], parity_inputs=20)
    ort_s = time.perf_counter() - t
    t = time.perf_counter()
    try:
        path = hc.build(ref, out=out / "both", backends=["onnxruntime", "tvm"], parity_inputs=20)
    except hc.HypercompileError as e:  # report why TVM cannot take this model
        rows.append({"name": name, "batch": 1, "fail": _first_line(e), "ort_s": ort_s})
        return
    tvm_s = time.perf_counter() - t - ort_s
    tuned, tune_s, tune_note = None, None, ""
    if trials:
        try:
            tpath = hc.build(
                ref, out=out / "tuned", backends=["tvm"], parity_inputs=20, tune_trials=trials
            )
            tuned = hc.load(tpath)
            info = [g.tvm_tuning for g in tuned.manifest.graphs.values()]
            tune_s = sum(i["tuning_s"] for i in info)
            n_fun = sum(i["functions"] for i in info)
            n_dyn = sum(i["dynamic_functions"] for i in info)
            n_win = sum(i["tuned_functions"] for i in info)
            tune_note = f"{n_win}/{n_fun} fns" + (f", {n_dyn} dyn" if n_dyn else "")
        except hc.HypercompileError as e:
            tune_note = f"fails: {_first_line(e)[:40]}"
    bundle = hc.load(path)
    cond = bundle.variants[len(bundle.variants) // 2]
    rng = np.random.default_rng(0)
    for batch in batches:
        pool = [_inputs(bundle, batch, rng) for _ in range(16)]

        def over(b: hc.Bundle, backend: str, pool=pool):
            return lambda: [b.run(x, backend=backend, **cond) for x in pool]

        fns = {"onnxruntime": over(bundle, "onnxruntime"), "tvm": over(bundle, "tvm")}
        if tuned is not None:
            fns["tuned"] = over(tuned, "tvm")
        stats = measure(fns, rounds=rounds)
        med = {k: v["median"] / len(pool) for k, v in stats.items()}
        rows.append(
            {
                "name": name,
                "batch": batch,
                "ort": med["onnxruntime"],
                "tvm": med["tvm"],
                "tuned": med.get("tuned"),
                "ort_s": ort_s,
                "tvm_s": tvm_s,
                "tune_s": tune_s,
                "note": tune_note,
            }
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--models", default="", help="comma-separated subset (example or zoo names)")
    ap.add_argument("--no-zoo", action="store_true")
    ap.add_argument("--tune-trials", type=int, default=32, help="MetaSchedule trials per graph")
    args = ap.parse_args()
    only = {m for m in args.models.split(",") if m}
    console.print(f"machine: {machine()}")
    rows: list = []
    with tempfile.TemporaryDirectory() as d:
        for name, ref in HYPERNETS.items():
            if not only or name in only:
                run(
                    name,
                    str(ROOT / ref),
                    Path(d) / name,
                    (1, 32),
                    args.rounds,
                    args.tune_trials,
                    rows,
                )
        for name, ref in HELDOUT.items():
            if not only or name in only:
                run(
                    name, str(ROOT / ref), Path(d) / name, (1,), args.rounds, args.tune_trials, rows
                )
        for name in [] if args.no_zoo else ZOO:
            if not only or name in only:
                ref = f"{ROOT}/examples/dynamic/zoo.py:{name}"
                run(name, ref, Path(d) / name, (1,), args.rounds, args.tune_trials, rows)
    t = table(
        f"ONNX Runtime vs TVM untuned vs TVM tuned ({args.tune_trials} trials per graph), "
        f"median of {args.rounds} interleaved rounds",
        [
            "model",
            "batch",
            "onnxruntime",
            "tvm",
            "tvm tuned",
            "ort/tvm",
            "ort/tuned",
            "ORT build",
            "+ TVM compile",
            "tuning",
            "tuned",
        ],
    )
    for r in rows:
        if "fail" in r:
            t.add_row(
                r["name"],
                str(r["batch"]),
                "-",
                f"fails: {r['fail'][-60:]}",
                "-",
                "-",
                "-",
                f"{r['ort_s']:.1f} s",
                "-",
                "-",
                "-",
            )
            continue
        tuned = r["tuned"]
        t.add_row(
            r["name"],
            str(r["batch"]),
            fmt_time(r["ort"]),
            fmt_time(r["tvm"]),
            fmt_time(tuned),
            f"{r['ort'] / r['tvm']:.2f}x",
            f"{r['ort'] / tuned:.2f}x" if tuned else "-",
            f"{r['ort_s']:.1f} s",
            f"{r['tvm_s']:.1f} s",
            f"{r['tune_s']:.1f} s" if r["tune_s"] is not None else "-",
            r["note"],
        )
    console.print(t)
    console.print(
        "ratios > 1: TVM is faster than ONNX Runtime. TVM: llvm for this CPU (host mcpu), "
        "hypercompile's default CPU schedules (graphs with a dynamic batch also get a batch-1 "
        "copy with static shapes); tuned: + MetaSchedule's evolutionary search over the "
        "static-shape TIR functions (N measured candidates per graph; dynamic-batch functions "
        "keep the default schedule); 'tuned' = functions where the tuned schedule beat the "
        "default / static functions."
    )


if __name__ == "__main__":
    main()
