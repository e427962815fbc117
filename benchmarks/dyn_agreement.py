"""Agreement of dynamic-network bundles with eager PyTorch on fresh inputs: the zoo's published
models (examples/dynamic/zoo.py) and the held-out per-sample-exit and token-dispatch models
(tests/dyn_models.py), each built from its unmodified forward, then run on N fresh random
inputs at its example batch and at other batch sizes.

    .venv/bin/python benchmarks/dyn_agreement.py [--inputs 300] [--models skipnet_ff,...]

Prints per model: inputs, argmax mismatches, max abs error, and the batch sizes run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "dynamic"))
sys.path.insert(0, str(ROOT / "tests"))

import dyn_models  # noqa: E402
from zoo import ZOO  # noqa: E402

import hypercompile as hc  # noqa: E402

HELD_OUT = {"per_sample_exit_b8": dyn_models.PerSampleExit, "token_dispatch": dyn_models.TokenMoE}
DEFAULT = "skipnet_ff,skipnet_rnn,blockdrop,shallow_deep,ranet,branchynet_b8,top1_moe"


def first(out):
    if isinstance(out, dict):
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return first(out[0])
    return out


def agreement(name: str, n: int, tmp: Path) -> dict:
    model = (HELD_OUT.get(name) or ZOO[name])().eval()
    ex = model.example_inputs() if callable(model.example_inputs) else model.example_inputs
    shape = tuple(ex[0].shape)
    b = hc.load(hc.build(model, out=tmp / name, allow_untested=True))
    variant = b.manifest.variants[0]
    program = b.manifest.programs.get(variant.program or "")
    batches = [shape[0]] if program is None or program.fixed_batch else [shape[0], 1, 5]
    in_name = b.inputs[0]["name"]
    gen = torch.Generator().manual_seed(1234)
    worst, mismatches, count = 0.0, 0, 0
    for i in range(n):
        size = batches[i % len(batches)]
        scale = 0.2 if i % 2 else 3.0  # both sides of confidence-based exits
        x = torch.randn((size, *shape[1:]), generator=gen) * scale
        with torch.no_grad():
            want = first(model(x)).numpy()
        got = first(b.run({in_name: np.ascontiguousarray(x.numpy())}))
        worst = max(worst, float(np.abs(got - want).max()))
        if want.dtype.kind == "f" and want.ndim >= 1:
            mismatches += int((got.argmax(-1) != want.argmax(-1)).sum())
        count += 1
    return {"inputs": count, "mismatches": mismatches, "max_abs": worst, "batches": batches}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=300)
    ap.add_argument("--models", default=DEFAULT + ",per_sample_exit_b8,token_dispatch")
    args = ap.parse_args()
    print("| model | inputs | argmax mismatches | max abs error | batch sizes |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            r = agreement(name.strip(), args.inputs, Path(d))
            print(
                f"| {name} | {r['inputs']} | {r['mismatches']} | {r['max_abs']:.2e} | "
                f"{', '.join(map(str, r['batches']))} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
