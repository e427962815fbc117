"""Storage benchmark for families whose variants share weights: an SN-Net stitch family (two
anchors, stitching layers both ways at three depths; tests/storage_models.py) and OFA
MobileNetV3 subnets (random init, no downloads). Per family: the variants, their unique weight
bytes, the weight bytes a bundle stored before content addressing (one copy per variant) and
after (the bundle's weight files), and the resident memory (RSS) a fresh process gains by
loading the bundle and binding every variant on ONNX Runtime, with shared tensors and with one
private copy per variant (the runtime before content addressing).

Generator storage (`--storage generate`), for hypernets whose tasks each get their own weights:
a 300-task hypnettorch hypernet (HMLP with hypnettorch's default hidden layers, and a
ChunkedHMLP) and a federated 100-client hypernet in the style of pFedHN (Shamsian et al., ICML
2021: client embeddings -> an MLP -> a CNN's weights), each built materialized and generated:
bundle bytes and unique weight bytes, the first call on a task whose runner is not loaded
(the switch: reading or generating its weights, binding them, the call), steady-state calls,
and the RSS a fresh process gains by binding every variant. Timings are medians in a fresh
process per bundle, batch 1.

    python benchmarks/bench_storage.py [--families stitch,ofa,hnet300,hnet300c,fed100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
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

# Runs in a fresh process: the first call on each of up to 60 tasks whose runners are not loaded
# (after one warm-up task: ONNX Runtime's set-up and the generator's session), steady-state
# calls of one task, then every variant bound at once and the RSS gained since the start.
_TIME = r"""
import gc, json, statistics, sys, time
import numpy as np
import hypercompile as hc

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

path, pool = sys.argv[1], (sys.argv[2] if sys.argv[2] != "default" else None)
import onnxruntime
gc.collect()
before = rss()
b = hc.load(path, cache_size=100000, ort_pool=pool)
conds = b.variants
feeds = {s["name"]: np.random.default_rng(0).standard_normal(
    [1 if d in ("batch", None) else d for d in s["shape"]]).astype(s["dtype"]) for s in b.inputs}
b.run(feeds, **conds[0])
switch = []
for cond in conds[1:61]:
    t = time.perf_counter(); b.run(feeds, **cond); switch.append(time.perf_counter() - t)
steady = []
for _ in range(3000):
    t = time.perf_counter(); b.run(feeds, **conds[1]); steady.append(time.perf_counter() - t)
for cond in conds:
    b.run(feeds, **cond)
gc.collect()
print(json.dumps({"switch_ms": 1e3 * statistics.median(switch),
                  "call_us": 1e6 * statistics.median(steady), "rss": rss() - before}))
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


def hnet300(chunked: bool = False):
    """300 tasks of a hypnettorch hypernet as its continual-learning examples set one up: an MLP
    main net (no weights of its own), task embeddings, HMLP layers (100, 100) (hypnettorch's
    default) or a ChunkedHMLP (chunks of 2,000 weights, each with its own embedding)."""
    import torch
    from hypnettorch.hnets import HMLP, ChunkedHMLP
    from hypnettorch.mnets import MLP

    from hypercompile.adapters.hypnettorch import HypnettorchModel

    torch.manual_seed(0)
    mnet = MLP(n_in=64, n_out=10, hidden_layers=(100, 100), no_weights=True, verbose=False)
    if chunked:
        hnet = ChunkedHMLP(
            mnet.param_shapes,
            chunk_size=2000,
            chunk_emb_size=16,
            cond_in_size=16,
            layers=(100, 100),
            num_cond_embs=300,
            verbose=False,
        )
    else:
        hnet = HMLP(
            mnet.param_shapes, cond_in_size=8, layers=(100, 100), num_cond_embs=300, verbose=False
        )
        hnet.apply_hyperfan_init(mnet=mnet)
    return HypnettorchModel(hnet, mnet)


def fed100():
    from storage_models import FederatedHypernet

    return FederatedHypernet(clients=100)


FAMILIES = {
    "stitch": ("SN-Net stitch (2 MLP anchors)", stitch_family),
    "ofa": ("OFA MobileNetV3", ofa_family),
}
GENERATED = {
    "hnet300": ("hypnettorch HMLP, 300 tasks", hnet300),
    "hnet300c": ("hypnettorch ChunkedHMLP, 300 tasks", lambda: hnet300(chunked=True)),
    "fed100": ("pFedHN-style, 100 clients", fed100),
}


def _fresh(script: str, *args: str) -> dict:
    code = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(code.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="stitch,ofa,hnet300,hnet300c,fed100")
    args = ap.parse_args()
    keys = args.families.split(",")
    unknown = [k for k in keys if k not in FAMILIES and k not in GENERATED]
    if unknown:
        ap.error(f"unknown families {unknown}; known: {', '.join([*FAMILIES, *GENERATED])}")
    if any(k in FAMILIES for k in keys):
        shared_weights([k for k in keys if k in FAMILIES])
    if any(k in GENERATED for k in keys):
        generated([k for k in keys if k in GENERATED])


def shared_weights(keys: list[str]) -> None:
    from common import console
    from rich.table import Table

    import hypercompile as hc

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
        for key in keys:
            label, make = FAMILIES[key]
            path = hc.build(make(), out=Path(tmp) / key)
            m = hc.load(path).manifest
            after = sum((path / r).stat().st_size for r in {t.file for t in m.tensors.values()})
            before = sum(v.bytes for v in m.variants)
            copies, shared = _fresh(_BIND, str(path), "copy"), _fresh(_BIND, str(path), "shared")
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


def generated(keys: list[str]) -> None:
    """Materialized against generated bundles of hypernets with a weight set per task."""
    from common import console
    from rich.table import Table

    import hypercompile as hc

    mib = 1 << 20
    table = Table(title="generator storage: materialized vs generated (ONNX Runtime, this CPU)")
    cols = ("family", "storage", "bundle", "unique weights", "vs materialized", "build s")
    cols += ("switch ms", "call us", "call ratio", "RSS all bound", "parity max rel")
    for col in cols:
        table.add_column(col, justify="left" if col in ("family", "storage") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            label, make = GENERATED[key]
            hm = make()
            rows = {}
            for mode in ("materialize", "generate"):
                t = time.perf_counter()
                path = hc.build(hm, out=Path(tmp) / f"{key}-{mode}", storage=mode)
                build_s = time.perf_counter() - t
                m = hc.load(path).manifest
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                rows[mode] = (path, m, size, build_s, _fresh(_TIME, str(path), "default"))
                if mode == "materialize":  # the pool a generated bundle gets by default
                    shared = _fresh(_TIME, str(path), "shared")
                    rows["materialize, shared pool"] = (path, m, size, build_s, shared)
            for mode, (_, m, size, build_s, timed) in rows.items():
                base_size, base_call = rows["materialize"][2], rows["materialize"][4]["call_us"]
                worst = max(p.max_rel or 0 for v in m.variants for p in v.parity.values())
                table.add_row(
                    f"{label} ({len(m.variants)} variants)" if mode == "materialize" else "",
                    mode,
                    f"{size / mib:.2f} MiB",
                    f"{m.weight_bytes / mib:.2f} MiB",
                    f"{size / base_size:.3f}x",
                    f"{build_s:.1f}",
                    f"{timed['switch_ms']:.3f}",
                    f"{timed['call_us']:.1f}",
                    f"{timed['call_us'] / base_call:.2f}x",
                    f"{timed['rss'] / mib:.1f} MiB",
                    f"{worst:.1e}",
                )
    console.print(table)
    console.print(
        "switch: median first call on a task whose runner is not loaded (60 tasks, after one "
        "warm-up task); call: median steady-state call at batch 1; RSS: what a fresh process "
        "gains by loading the bundle and binding every variant. A materialized bundle gives "
        "its static sessions thread pools of their own by default (spinning idle pools slow "
        "every new session); 'shared pool' loads it with ort_pool='shared', as a bundle with "
        "generators is by default."
    )


if __name__ == "__main__":
    main()
