"""Build-time benchmark for dynamic networks: seconds to build a bundle (ONNX Runtime back end)
for zoo models (examples/dynamic/zoo.py) at their zoo sizes and at published depths
(SkipNet-38: SkipNetFF with 6 blocks per group; BlockDrop-110: 18 blocks per segment), split
into export (blocks to ONNX), compile (back end), verify (the bundle through the runtime) and
other (loading, splitting, the eager probe over the parity inputs). Each model is built in a
fresh process, so that no warm state of one build helps the next; the table shows medians over
--runs.

    python benchmarks/bench_build.py [--models skipnet_ff,skipnet38,...] [--runs 3]

Depth variants use random gate biases, so some branch sides may never be taken: they are built
with allow_untested (the check still runs 200 parity inputs through the runtime).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = {
    "shallow_deep": ("ShallowDeep", "()"),
    "skipnet_ff": ("SkipNetFF", "()"),
    "skipnet_rnn": ("SkipNetRNN", "()"),
    "blockdrop": ("BlockDrop", "()"),
    "top1_moe": ("TopOneMoE", "()"),
    "skipnet38": ("SkipNetFF", "((6, 6, 6),)"),
    "blockdrop110": ("BlockDrop", "((18, 18, 18),)"),
}

# One build in a fresh interpreter; prints a JSON line of stage seconds.
CHILD = r"""
import json, sys, time
sys.path.insert(0, {zoo!r})
import zoo
import hypercompile as hc
import importlib
B = importlib.import_module("hypercompile.builder.build")

cls, args, out = {cls!r}, {args}, {out!r}
if cls == "BlockDrop" and args:  # one policy bias per block
    zoo.BlockDrop.POLICY_BIAS = (zoo.BlockDrop.POLICY_BIAS * 20)[: sum(args[0])]
model = getattr(zoo, cls)(*args)
times = {{"export": 0.0, "compile": 0.0, "verify": 0.0}}

def timed(name, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            times[name] += time.perf_counter() - t
    return wrapper

B._compile_graph = timed("compile", B._compile_graph)
P = importlib.import_module("hypercompile.frontend.program")
P.export_block = timed("export", P.export_block)  # before worker exports
try:
    E = importlib.import_module("hypercompile.builder.exports")
    E.export_in_workers = timed("export", E.export_in_workers)
except ImportError:
    pass
B.verify_bundle = timed("verify", B.verify_bundle)
t = time.perf_counter()
path = hc.build(model, out=out, backends=["onnxruntime"], allow_untested=bool(args))
total = time.perf_counter() - t
m = json.loads((path / "manifest.json").read_text())
blocks = sum(1 for p in m["programs"].values() for b in p["blocks"] if b["graph"])
rest = total - times["export"] - times["compile"] - times["verify"]
print(json.dumps({{"total": total, "other": rest, **times, "graphs": len(m["graphs"]),
                  "blocks": blocks}}))
"""


def run_one(name: str, out: Path) -> dict:
    cls, args = MODELS[name]
    code = CHILD.format(zoo=str(ROOT / "examples" / "dynamic"), cls=cls, args=args, out=str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{name}: build failed\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from common import console, table

    t = table(
        f"build seconds, median of {args.runs}",
        ["model", "blocks", "graphs", "total", "export", "compile", "verify", "other"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            runs = [run_one(name, Path(tmp) / f"{name}{i}") for i in range(args.runs)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(name, json.dumps(runs), flush=True)
            t.add_row(
                name,
                str(int(med["blocks"])),
                str(int(med["graphs"])),
                *(f"{med[k]:.1f}" for k in ("total", "export", "compile", "verify", "other")),
            )
    console.print(t)


if __name__ == "__main__":
    main()
