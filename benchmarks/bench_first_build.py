"""First-build time: `hypercompile build` of a two-layer MLP (a plain nn.Module, 276
parameters) from a fresh process, against `python -c "import torch, onnx"` in a fresh process:
what a user waits for beyond importing the libraries the build needs. Interleaved rounds,
medians, and the ratio (issue 15 asks for at most 2x).

    python benchmarks/bench_first_build.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import console, machine, table  # noqa: E402

MODEL = """
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 24)
        self.fc2 = nn.Linear(24, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def example_inputs(self):
        return (torch.randn(1, 8),)


def make():
    return MLP()
"""


def _time(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    console.print(f"machine: {machine()}")
    exe = str(Path(sys.executable).parent / "hypercompile")
    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "mlp.py"
        model.write_text(MODEL)
        cmds = {
            "import torch, onnx": [sys.executable, "-c", "import torch, onnx"],
            "hypercompile build": [exe, "build", f"{model}:make", "--out", f"{d}/b", "--json"],
            # what `pip install hypercompile[build]` builds: ONNX Runtime only (no TVM)
            "build --backend onnxruntime": [
                *[exe, "build", f"{model}:make", "--backend", "onnxruntime"],
                *["--out", f"{d}/o", "--json"],
            ],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        _time(cmds["hypercompile build"])  # warm the disk cache once
        for _ in range(args.rounds):
            for k, cmd in cmds.items():
                times[k].append(_time(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    t = table(
        f"two-layer MLP, fresh process, median of {args.rounds} interleaved rounds",
        ["command", "median", "min", "max"],
    )
    for k, v in times.items():
        t.add_row(k, f"{med[k]:.2f} s", f"{min(v):.2f} s", f"{max(v):.2f} s")
    console.print(t)
    for k in ("hypercompile build", "build --backend onnxruntime"):
        console.print(f"{k} / import torch, onnx: {med[k] / med['import torch, onnx']:.2f}x")


if __name__ == "__main__":
    main()
