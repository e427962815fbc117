"""The build pipeline: model -> materialized variants -> one graph per architecture -> back ends
-> bundle, checked numerically against PyTorch through the runtime before it is put in place."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from . import format as fmt
from .backends import get_backend
from .errors import BackendError, BuildError, ParityError
from .frontend.export import OPSET, GraphInfo, export_graph
from .frontend.loader import resolve_model
from .frontend.materialize import (
    architecture_signature,
    cond_label,
    flatten_outputs,
    materialize,
    parity,
    random_like,
)
from .runtime.bundle import Bundle
from .targets import Target, load_target

Progress = Callable[[str, int, int], None]


@dataclass
class _Check:
    """Inputs and PyTorch's answers for one variant, kept until the bundle is verified."""

    inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    expected: list[list[np.ndarray]] = field(default_factory=list)
    against: str = "target"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def select_conditions(conds: Iterable[dict], where: dict[str, list[Any]] | None) -> list[dict]:
    """Conditions whose values for every `where` key are among the allowed ones."""
    conds = [dict(c) for c in conds]
    for c in conds:
        bad = [k for k, v in c.items() if not isinstance(v, (int, float, str, bool))]
        if bad or not all(isinstance(k, str) for k in c):
            raise BuildError(f"condition {c!r}: keys must be str and values JSON scalars")
    if not where:
        return conds
    keys = {k for c in conds for k in c}
    for k in where:
        if k not in keys:
            raise BuildError(f"--where {k}: the model's conditions have no key {k!r}")

    def allowed(c: dict) -> bool:
        return all(str(c.get(k)) in {str(v) for v in vs} for k, vs in where.items())

    chosen = [c for c in conds if allowed(c)]
    if not chosen:
        raise BuildError(f"no condition satisfies --where {where}")
    return chosen


def _prepare_out(out: Path) -> None:
    if out.exists() and not (out / fmt.MANIFEST).is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise BuildError(f"{out} exists and is not a bundle; refusing to overwrite it")


def _put_in_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build(
    model: Any,
    target: str | Path | Target | None = None,
    out: str | Path = "build/bundle",
    *,
    backends: list[str] | None = None,
    where: dict[str, list[Any]] | None = None,
    rtol: float = 1e-4,
    parity_inputs: int = 3,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Build a bundle for `model` (reference, HyperModel or nn.Module) and return its path."""
    t0 = time.perf_counter()
    tgt = load_target(target)
    names = list(backends or tgt.backends)
    for name in names:
        reason = get_backend(name).available()
        if reason:
            raise BackendError(f"back end {name}: {reason}")
    out = Path(out).resolve()
    _prepare_out(out)
    hm = resolve_model(model, example_inputs)
    conds = select_conditions(hm.conditions(), where)
    if not conds:
        raise BuildError("the model declares no conditions")
    report = progress or (lambda stage, done, total: None)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    # Parity forwards are tiny: one thread avoids oversubscription stalls on shared machines.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    (tmp / "graphs").mkdir(parents=True)
    (tmp / "weights").mkdir()
    try:
        manifest, checks = _materialize_all(hm, conds, tmp, tgt, names, parity_inputs, report)
        manifest["model"] = model if isinstance(model, str) else type(hm).__name__
        fmt.write_manifest(tmp, manifest)
        _verify_bundle(tmp, manifest, checks, rtol, report)
        manifest["build_s"] = round(time.perf_counter() - t0, 3)
        fmt.write_manifest(tmp, manifest)
        _put_in_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return out


def _materialize_all(hm, conds, tmp: Path, tgt: Target, backend_names, n_random, report):
    graphs: dict[str, dict[str, Any]] = {}
    by_arch: dict[str, str] = {}
    variants, checks = [], []
    gen = torch.Generator().manual_seed(0)
    for i, cond in enumerate(conds):
        label = cond_label(cond)
        report("materialize", i, len(conds))
        target = materialize(hm, cond)
        inputs = tuple(hm.example_inputs(cond))
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise BuildError(f"variant {label}: example_inputs() must return a tuple of tensors")
        arch = architecture_signature(target, inputs)
        if arch not in by_arch:
            gid = f"g{len(by_arch)}"
            t = time.perf_counter()
            info = export_graph(target, inputs, tmp / "graphs" / f"{gid}.onnx", label)
            graphs[gid] = _graph_entry(gid, arch, info, time.perf_counter() - t)
            for name in backend_names:
                rel = get_backend(name).compile(tmp / "graphs" / f"{gid}.onnx", tmp, gid, tgt)
                graphs[gid]["artifacts"][name] = rel
            by_arch[arch] = gid
        gid = by_arch[arch]
        g = graphs[gid]
        state = target.state_dict()
        tensors = {n: _np(state[n]) for n in g["weights"]}
        vid = f"v{i:04d}"
        wrel = f"weights/{vid}.safetensors"
        nbytes = fmt.write_tensors(tmp / wrel, tensors)
        entry = {
            "id": vid,
            "cond": cond,
            "graph": gid,
            "weights": wrel,
            "params": int(sum(t.size for t in tensors.values())),
            "bytes": nbytes,
            "artifacts": dict(g["artifacts"]),
        }
        quality = getattr(hm, "quality", None)
        if callable(quality):
            entry["quality"] = float(quality(cond))
        variants.append(entry)
        checks.append(_expected(hm, cond, target, inputs, g, gen, n_random))
    report("materialize", len(conds), len(conds))
    for g in graphs.values():
        g.pop("arch_inputs", None)
    manifest = {
        "schema_version": fmt.SCHEMA_VERSION,
        "producer": {
            "name": "hypercompile",
            "version": __version__,
            "torch": torch.__version__.split("+")[0],
            "onnx_opset": OPSET,
        },
        "target": tgt.to_json(),
        "inputs": _merge_specs([g["inputs"] for g in graphs.values()]),
        "outputs": _merge_specs([g["outputs"] for g in graphs.values()]),
        "graphs": graphs,
        "variants": variants,
        "programs": {},
        "profile": {},
        "files": {},
    }
    return manifest, checks


def _graph_entry(gid: str, arch: str, info: GraphInfo, export_s: float) -> dict[str, Any]:
    return {
        "path": f"graphs/{gid}.onnx",
        "arch": arch,
        "weights": info.weights,
        "inputs": info.inputs,
        "outputs": info.outputs,
        "output_names": [o["name"] for o in info.outputs],
        "dynamic_batch": info.dynamic_batch,
        "export_s": round(export_s, 3),
        "artifacts": {},
    }


def _merge_specs(spec_lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Bundle-level I/O: names and dtypes all graphs share; a dim that differs becomes null."""
    first = spec_lists[0]
    merged = []
    for i, spec in enumerate(first):
        others = [s[i] for s in spec_lists[1:] if i < len(s)]
        if any(o["name"] != spec["name"] or o["dtype"] != spec["dtype"] for o in others):
            raise BuildError(
                f"variants disagree on input/output {spec['name']!r}: every variant must keep "
                "the same names and dtypes"
            )
        shape = [
            d
            if all(len(o["shape"]) == len(spec["shape"]) and o["shape"][j] == d for o in others)
            else None
            for j, d in enumerate(spec["shape"])
        ]
        merged.append({"name": spec["name"], "dtype": spec["dtype"], "shape": shape})
    return merged


def _expected(hm, cond, target, inputs, graph, gen, n_random) -> _Check:
    """Check inputs (example + random, + one batch of 3 when batch is dynamic) and the answers
    of the reference path (hypernet + target) when the model has one, else of the target."""
    reference = getattr(hm, "reference", None)
    check = _Check(against="reference" if callable(reference) else "target")
    sets = [inputs] + [tuple(random_like(x, gen) for x in inputs) for _ in range(n_random)]
    if graph["dynamic_batch"]:
        sets.append(tuple(random_like(x, gen, batch=3) for x in inputs))
    names = [s["name"] for s in graph["inputs"]]
    with torch.no_grad():
        for xs in sets:
            out = reference(cond, *xs) if callable(reference) else target(*xs)
            check.inputs.append({n: _np(x) for n, x in zip(names, xs)})
            check.expected.append([_np(t) for t in flatten_outputs(out)[1]])
    return check


def _verify_bundle(root: Path, manifest, checks: list[_Check], rtol: float, report) -> None:
    """Hash every file, load the bundle through the runtime, and compare every variant on every
    back end with PyTorch; record parity and refuse the bundle if any exceeds `rtol`."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != fmt.MANIFEST:
            manifest["files"][p.relative_to(root).as_posix()] = fmt.sha256_file(p)
    fmt.write_manifest(root, manifest)
    bundle = Bundle(root, cache_size=1, threads=1)
    total = len(manifest["variants"])
    for i, (variant, check) in enumerate(zip(manifest["variants"], checks)):
        report("verify", i, total)
        variant["parity"] = {}
        for backend in variant["artifacts"]:
            worst_abs, worst_rel = 0.0, 0.0
            for feeds, want in zip(check.inputs, check.expected):
                got = bundle.run(feeds, backend=backend, **variant["cond"])
                a, r = parity(list(got.values()), want)
                worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
            variant["parity"][backend] = {
                "max_abs": worst_abs,
                "max_rel": worst_rel,
                "inputs": len(check.inputs),
                "against": check.against,
            }
            if not worst_rel <= rtol:
                raise ParityError(
                    f"variant {cond_label(variant['cond'])} on {backend}: max rel error "
                    f"{worst_rel:.3g} (max abs {worst_abs:.3g}) exceeds tolerance {rtol:g} "
                    f"against the {check.against}"
                )
    report("verify", total, total)
