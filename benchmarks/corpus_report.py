"""The corpus (tests/corpus_models.py) as a table: build seconds, exporter, batch mode, and the
worst error against eager PyTorch over 100 fresh inputs (every 20th with a NaN).

    .venv/bin/python benchmarks/corpus_report.py
"""

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import corpus_models  # noqa: E402
from test_corpus import STATIC  # noqa: E402

import hypercompile as hc  # noqa: E402


def main() -> None:
    cols = ["model", "build s", "kind", "exporter", "batch", "inputs", "NaN mismatches", "max abs"]
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shapes in sorted(STATIC.items()):
        torch.manual_seed(0)
        model = getattr(corpus_models, name)().eval()
        example = tuple(torch.randn(1, *s) for s in shapes)
        t = time.perf_counter()
        out = hc.build(model, out=Path(tempfile.mkdtemp()) / "b", example_inputs=example)
        build_s = time.perf_counter() - t
        b = hc.load(out)
        m = b.manifest
        v = m.variants[0]
        if v.graph:
            g = m.graphs[v.graph]
            kind, exporter = "graph", g.exporter
            batch = "dynamic" if g.dynamic_batch else "fixed"
        else:
            kind, exporter, batch = (
                f"program ({len(m.graphs_of(v))} blocks)",
                "torch.export",
                "fixed",
            )
        gen = torch.Generator().manual_seed(11)
        worst, nan_bad = 0.0, 0
        dyn = any(d == "batch" for s in b.inputs for d in s["shape"])
        for i in range(100):
            xs = [2 * torch.randn(2 if dyn else 1, *s, generator=gen) for s in shapes]
            if i % 20 == 19:
                xs[0].view(-1)[0] = float("nan")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = model(*xs).numpy()
                (got,) = b.run({s["name"]: x.numpy() for s, x in zip(b.inputs, xs)}).values()
            nan_bad += int(not np.array_equal(np.isnan(got), np.isnan(want)))
            ok = ~np.isnan(want)
            worst = max(worst, float(np.abs(got[ok] - want[ok]).max()) if ok.any() else 0.0)
        row = [name, f"{build_s:.1f}", kind, exporter, batch, "100", str(nan_bad), f"{worst:.2e}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
