"""What the bundle gains over the eager model: time per call of the hypernetwork + target in
PyTorch against `bundle.run` (ONNX Runtime), and bytes. Needs torch (it runs the eager model);
the bundle side is what a device runs.

Usage: python examples/continual_hypernet/gain.py BUNDLE_DIR
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import hypercompile as hc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import make  # noqa: E402  (the example's own module, next to this file)


def median_ms(fn: Callable[[], object], runs: int = 300) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    bundle = hc.load(argv[1])
    hm = make()  # the model the bundle was built from (same seed, same training)
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    xt = torch.from_numpy(x)
    cond = bundle.variants[-1]
    with torch.no_grad():
        eager = median_ms(lambda: hm.reference(cond, xt))
    compiled = median_ms(lambda: bundle.run({"x": x}, **cond))
    hnet = sum(p.numel() * p.element_size() for p in hm.net.parameters())
    on_disk = sum(p.stat().st_size for p in Path(argv[1]).rglob("*") if p.is_file())
    weights = bundle.manifest.weight_bytes
    print(f"per call, {cond}, batch 1 (median of 300):")
    print(f"  eager hypernet + target (PyTorch) {eager:8.3f} ms")
    print(f"  bundle.run (ONNX Runtime)         {compiled:8.3f} ms   ({eager / compiled:.1f}x)")
    print("bytes:")
    print(f"  hypernet parameters               {hnet:10,d}")
    print(f"  bundle weights, all tasks         {weights:10,d}")
    print(f"  bundle on disk, every file        {on_disk:10,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
