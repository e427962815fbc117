"""x86-cuda bundles on a CUDA GPU: parity against PyTorch and latency against torch eager CUDA.

Build the bundles anywhere (nvcc compiles the kernels ahead of time), then run this where a GPU,
torch with CUDA and TVM's runtime are installed (TVM's compiler is not needed there):

    hypercompile build examples/morph_hypernet/model.py:make --target x86-cuda \\
        --backend tvm --backend onnxruntime --out build/gpu/morph
    python benchmarks/bench_gpu.py build/gpu/morph [more bundles] [--rounds 30] [--variants 2]

Per variant and batch size it reports: the device check (the bundle's stored PyTorch answers
against TVM on this GPU, run by the runtime before first use), TVM vs torch eager on the GPU
with the same weights, and medians of interleaved rounds for torch eager CUDA and TVM with the
data already on the GPU, the same two from numpy in to numpy out (what `Bundle.run` costs an
application), and ONNX Runtime on the CPU for scale. torch runs in full fp32 (TF32 off), as the
TVM kernels do. DyNN programs run block by block under the
host program, so for them only numpy-in/numpy-out timings exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import console, fmt_time, measure, ratio  # noqa: E402
from rich.table import Table  # noqa: E402

import hypercompile as hc  # noqa: E402
from hypercompile.frontend.loader import resolve_model  # noqa: E402
from hypercompile.frontend.materialize import materialize  # noqa: E402


def torch_target(hm, bundle, variant):
    """The materialized target on the GPU, holding exactly the bundle's weights."""
    module = materialize(hm, variant.cond)
    weights = bundle.weights(variant)
    state = module.state_dict()
    shared = {k: torch.from_numpy(v.copy()) for k, v in weights.items() if k in state}
    module.load_state_dict(shared, strict=False)
    return module.cuda().eval(), len(shared), len(state)


def bench_variant(bundle, hm, variant, batch, rounds):
    import tvm

    cond = variant.cond
    module, _, _ = torch_target(hm, bundle, variant)
    xs = tuple(hm.example_inputs(cond))
    if batch > 1:
        xs = tuple(x.repeat(batch, *([1] * (x.dim() - 1))) for x in xs)
    names = [i["name"] for i in bundle.inputs]
    feeds = {n: x.numpy() for n, x in zip(names, xs)}
    xs_gpu = tuple(x.cuda() for x in xs)

    got = bundle.run(feeds, backend="tvm", **cond)  # runs the stored device checks first
    device_check = bundle.device_checks().get((variant.id, "tvm"), {})
    with torch.no_grad():
        want = module(*xs_gpu)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    vs_torch = max(
        float(np.max(np.abs(g - w.float().cpu().numpy()))) for g, w in zip(got.values(), want)
    )

    def eager_gpu():
        with torch.no_grad():
            module(*xs_gpu)
        torch.cuda.synchronize()

    def eager_numpy():
        with torch.no_grad():
            out = module(*(torch.from_numpy(a).cuda() for a in feeds.values()))
        out = [out] if isinstance(out, torch.Tensor) else out
        return [o.cpu().numpy() for o in out]

    fns = {
        "eager_gpu": eager_gpu,
        "eager_np": eager_numpy,
        "tvm_np": lambda: bundle.run(feeds, backend="tvm", **cond),
        "ort_cpu": lambda: bundle.run(feeds, backend="onnxruntime", **cond),
    }
    if variant.program is None:
        runner = bundle.load_runner(variant, "tvm")
        dev = tvm.cuda(0)
        args = [tvm.runtime.tensor(a, device=dev) for a in feeds.values()]

        def tvm_gpu():
            runner.fn(*args, *runner.weights)
            dev.sync()

        fns["tvm_gpu"] = tvm_gpu
    t = measure(fns, rounds=rounds)
    return {
        "device_check_max_abs": device_check.get("max_abs"),
        "vs_torch_cuda_max_abs": vs_torch,
        **{k: v["median"] for k, v in t.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--variants", type=int, default=2, help="variants per bundle")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA GPU visible to torch")
    # the peer computes in full fp32, as the TVM kernels do (cuDNN would use TF32 by default)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    console.print(
        f"GPU {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
        f"TVM {__import__('tvm').__version__} (runtime)"
    )
    rows = []
    for path in args.bundles:
        bundle = hc.load(path)
        hm = resolve_model(bundle.manifest.model)
        for variant in bundle.manifest.variants[: args.variants]:
            batches = [1]
            if variant.program is None and bundle.manifest.graphs[variant.graph].dynamic_batch:
                batches.append(32)
            for batch in batches:
                r = bench_variant(bundle, hm, variant, batch, args.rounds)
                r.update(model=Path(path).name, cond=variant.cond, batch=batch)
                rows.append(r)
                console.print(f"  {r['model']} {r['cond']} b{batch} done")
    table = Table(title="x86-cuda bundles: TVM CUDA kernels vs torch eager CUDA (medians)")
    for col in (
        "model",
        "variant",
        "batch",
        "check",
        "vs torch",
        "eager GPU",
        "TVM GPU",
        "eager/TVM",
        "eager np",
        "TVM np",
        "eager/TVM np",
        "ORT CPU",
    ):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for r in rows:
        check = r["device_check_max_abs"]
        table.add_row(
            r["model"],
            ",".join(f"{k}={v}" for k, v in r["cond"].items()) or "-",
            str(r["batch"]),
            "n/a" if check is None else f"{check:.1e}",
            f"{r['vs_torch_cuda_max_abs']:.1e}",
            fmt_time(r["eager_gpu"]),
            fmt_time(r.get("tvm_gpu")),
            ratio(r["eager_gpu"], r.get("tvm_gpu")),
            fmt_time(r["eager_np"]),
            fmt_time(r["tvm_np"]),
            ratio(r["eager_np"], r["tvm_np"]),
            fmt_time(r["ort_cpu"]),
        )
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
