"""TensorRT on the device: engines built (or fetched from the cache), refitted and checked per
variant, then timed against ONNX Runtime on the same bundle.

Build the bundle anywhere for a target that lists tensorrt, then run this on the device (a
Jetson with JetPack 6, or a machine with a GPU, TensorRT 10 and cuda-bindings):

    hypercompile build examples/morph_hypernet/model.py:make --target jetson-orin-nano \\
        --backend tensorrt --backend onnxruntime --out build/orin
    python benchmarks/bench_tensorrt.py build/orin [--batch 1 --batch 8] [--rounds 30]

Per variant it reports whether the engine was built or came from the cache (and the build
seconds), the on-device check against PyTorch with its precision-aware tolerance, and medians
of interleaved rounds for TensorRT and ONNX Runtime (the target's providers that exist here),
numpy in to numpy out. Where TensorRT or a GPU is missing it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import console, fmt_time, machine, measure, ratio, table  # noqa: E402

import hypercompile as hc  # noqa: E402
from hypercompile.runtime import prepare  # noqa: E402
from hypercompile.runtime.runners import get_runner_factory  # noqa: E402


def inputs_for(bundle: hc.Bundle, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in bundle.inputs:
        shape = [batch if d == "batch" else d for d in spec["shape"]]
        feeds[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--cache", type=Path, default=None, help="engine cache folder")
    args = ap.parse_args()

    factory = get_runner_factory("tensorrt")
    console.print(f"machine: {machine()}")
    for path in args.bundles:
        b = hc.load(path, engine_cache=args.cache)
        why = factory.runs_here(b.target)
        if why:
            console.print(f"{path}: TensorRT cannot run here ({why}); nothing to measure")
            continue
        report = prepare(b)
        if not report:
            console.print(f"{path}: no variant has TensorRT artifacts")
            continue
        t = table(
            f"{path} ({b.target.name}, {b.target.tensorrt_precision})",
            ["condition", "batch", "engine", "check max rel", "tol", "TensorRT", "ORT", "ORT/TRT"],
        )
        for rec in report:
            engines = rec["engines"]
            built = sum(e["built"] for e in engines)
            engine = f"built {sum(e['build_s'] for e in engines):.1f}s" if built else "cached"
            checks = rec["checks"] or {}
            for batch in args.batch or [1]:
                feeds = inputs_for(b, batch)
                fns = {
                    name: lambda f=feeds, be=be, bb=b, c=rec["cond"]: bb.run(f, backend=be, **c)
                    for name, be in (("trt", "tensorrt"), ("ort", "onnxruntime"))
                }
                times = measure(fns, rounds=args.rounds)
                trt, ort = times["trt"]["median"], times["ort"]["median"]
                t.add_row(
                    " ".join(f"{k}={v}" for k, v in rec["cond"].items()) or "-",
                    str(batch),
                    engine,
                    f"{checks.get('max_rel', float('nan')):.2e}",
                    f"{checks.get('rtol', float('nan')):g}",
                    fmt_time(trt),
                    fmt_time(ort),
                    ratio(ort, trt),
                )
        console.print(t)
    return 0


if __name__ == "__main__":
    reason = get_runner_factory("tensorrt").available()
    if reason:
        print(f"bench_tensorrt: {reason}; nothing to measure here")
        sys.exit(0)
    sys.exit(main())
