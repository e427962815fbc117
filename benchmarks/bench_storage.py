"""Storage benchmark for families whose variants share weights: an SN-Net stitch family (two
anchors, stitching layers both ways at three depths; tests/storage_models.py) and OFA
MobileNetV3 subnets (random init, no downloads). Per family: the variants, their unique weight
bytes, the weight bytes a bundle stored before content addressing (one copy per variant) and
after (the bundle's weight files), and the resident memory (RSS) a fresh process gains by
loading the bundle and binding every variant on ONNX Runtime, with shared tensors and with one
private copy per variant (the runtime before content addressing).

    python benchmarks/bench_storage.py [--families stitch,ofa]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

# Runs in a fresh process: load the bundle, run every variant once (so every session exists),
# print the RSS gained. With "copy", every variant gets private copies of its weights, bound
# by copying them into its session: what the runtime did before content addressing.
_BIND = r"""
import gc, json, sys
import numpy as np
import hypercompile as hc

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

path, mode = sys.argv[1], sys.argv[2]
if mode == "copy":
    from hypercompile.runtime.bundle import Bundle
    from hypercompile.runtime.runners import onnxruntime as ortr
    weights = Bundle.weights
    Bundle.weights = lambda self, v: {k: a.copy() for k, a in weights(self, v).items()}
    session = ortr.OnnxRuntimeRunners._session
    ortr.OnnxRuntimeRunners._session = lambda self, b, p, v, shared: session(self, b, p, v, False)
import onnxruntime  # imported before the baseline, like numpy
gc.collect()
before = rss()
b = hc.load(path, cache_size=1000)
for cond in b.variants:
    feeds = {s["name"]: np.zeros([1 if d in ("batch", None) else d for d in s["shape"]],
                                 s["dtype"]) for s in b.inputs}
    b.run(feeds, **cond)
gc.collect()
shared = all(getattr(r, "shared", False) for r in b._runners.values())
print(json.dumps({"rss": rss() - before, "in_place": shared}))
"""


def stitch_family():
    from storage_models import StitchFamily

    return StitchFamily(widths=(192, 384), depth=6, points=(2, 3, 4))


def ofa_family():
    import torch
    from torch import nn

    from hypercompile.adapters.ofa import OFAModel, import_ofa_networks

    nets = import_ofa_networks()
    torch.manual_seed(0)
    net = nets.OFAMobileNetV3(
        n_classes=100,
        width_mult=1.0,
        ks_list=[3, 5, 7],
        expand_ratio_list=[3, 4, 6],
        depth_list=[2, 3, 4],
        dropout_rate=0,
    )
    for m in net.modules():  # random statistics, so that batch norm is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    archs = {
        "min": {"ks": 3, "e": 3, "d": 2},
        "mid": {"ks": 5, "e": 4, "d": 3},
        "max": {"ks": 7, "e": 6, "d": 4},
        "mixed": {"ks": [3, 5, 7, 5, 3] * 4, "e": 4, "d": [2, 4, 2, 4, 3]},
    }
    return OFAModel(net, archs, image_size=64)


FAMILIES = {
    "stitch": ("SN-Net stitch (2 MLP anchors)", stitch_family),
    "ofa": ("OFA MobileNetV3", ofa_family),
}


def _rss(path: Path, mode: str) -> dict:
    code = subprocess.run(
        [sys.executable, "-c", _BIND, str(path), mode],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(code.stdout.strip().splitlines()[-1])


def main() -> None:
    from common import console
    from rich.table import Table

    import hypercompile as hc

    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="stitch,ofa")
    args = ap.parse_args()
    mib = 1 << 20
    table = Table(title="weight storage: content-addressed tensors (ONNX Runtime, this CPU)")
    for col in (
        "family",
        "variants",
        "graphs",
        "unique weights",
        "stored before (sum per variant)",
        "stored after (weight files)",
        "RSS bound, copies",
        "RSS bound, shared",
        "in place",
    ):
        table.add_column(col, justify="left" if col == "family" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.families.split(","):
            label, make = FAMILIES[key]
            path = hc.build(make(), out=Path(tmp) / key)
            m = hc.load(path).manifest
            after = sum((path / r).stat().st_size for r in {t.file for t in m.tensors.values()})
            before = sum(v.bytes for v in m.variants)
            copies, shared = _rss(path, "copy"), _rss(path, "shared")
            table.add_row(
                label,
                str(len(m.variants)),
                str(len(m.graphs)),
                f"{m.weight_bytes / mib:.2f} MiB",
                f"{before / mib:.2f} MiB ({before / m.weight_bytes:.2f}x)",
                f"{after / mib:.2f} MiB ({after / m.weight_bytes:.2f}x)",
                f"{copies['rss'] / mib:.1f} MiB",
                f"{shared['rss'] / mib:.1f} MiB",
                "all" if shared["in_place"] else "some copied (ORT folds weights)",
            )
    console.print(table)
    console.print(
        "RSS: what a fresh process gains by loading the bundle and running every variant once "
        "(sessions, bound weights, ONNX Runtime's per-session prepacked weights and arenas)."
    )


if __name__ == "__main__":
    main()
