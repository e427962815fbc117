"""The build pipeline: model -> materialized variants -> one graph per architecture -> back ends
-> bundle, checked numerically against PyTorch through the runtime before it is put in place."""

from __future__ import annotations

import ast
import json
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

from .. import __version__
from ..compilers import CompileOptions, TuneRequest, compiler_names, get_compiler
from ..core import ir
from ..core import tensors as fmt
from ..core.targets import Target, host_arch, load_target, parse_target
from ..errors import (
    BackendError,
    BuildError,
    HypercompileError,
    ParityError,
    UnsupportedModelError,
)
from ..frontend.export import OPSET, GraphInfo, export_graph
from ..frontend.loader import resolve_model
from ..frontend.materialize import (
    architecture_signature,
    cond_label,
    flatten_outputs,
    materialize,
    random_like,
)
from ..runtime.bundle import Bundle
from ..runtime.checks import pack_checks, parity
from ..runtime.runners import get_runner_factory

Progress = Callable[[str, int, int], None]
DYNAMIC_PARITY_INPUTS = 200


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


def _why_not(name: str, tgt: Target) -> str | None:
    """Why back end `name` cannot build for `tgt` on this machine, or None. The target is
    judged as the compiler compiles for it (a TVM tag expanded: a CUDA tag needs nvcc); an
    unknown TVM tag is a BuildError, not a reason to leave TVM out."""
    if name not in compiler_names():
        return (
            f"back end {name} is not implemented yet"
            if name == "tensorrt"
            else (f"unknown back end {name!r} (known: {', '.join(compiler_names())})")
        )
    compiler = get_compiler(name)
    reason = compiler.available() or compiler.can_build(compiler.compile_target(tgt))
    if reason:
        return f"back end {name}: {reason}"
    return None


def _choose_backends(requested: list[str] | None, tgt: Target) -> tuple[list[str], Target]:
    """Requested back ends must all build here; by default, the target's list, keeping those
    that can build on this machine; `["auto"]`: every back end that can build here (the
    target's first), to be profiled after the build. Returns them with the target as their
    compilers compile for it (TVM: its tag expanded, the host CPU filled in), which the
    manifest records."""
    if requested == ["auto"]:
        order = list(tgt.backends) + [n for n in compiler_names() if n not in tgt.backends]
        names = [n for n in order if _why_not(n, tgt) is None]
        if not names:
            raise BackendError(f"no back end can build for {tgt.name} here")
    elif requested and "auto" in requested:
        raise BackendError("--backend auto cannot be combined with other back ends")
    elif requested:
        for name in requested:
            reason = _why_not(name, tgt)
            if reason:
                raise BackendError(reason)
        names = list(requested)
    else:
        names = [n for n in tgt.backends if _why_not(n, tgt) is None]
        if not names:
            reasons = "; ".join(_why_not(n, tgt) or "" for n in tgt.backends)
            raise BackendError(f"no back end of target {tgt.name} can build here: {reasons}")
    for name in names:
        tgt = get_compiler(name).compile_target(tgt)
    return names, tgt


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
    parity_inputs: int | None = None,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    progress: Progress | None = None,
    tune_trials: int | None = None,
) -> Path:
    """Build a bundle for `model` (reference, HyperModel or nn.Module) and return its path.
    `backends=["auto"]` builds every back end that can build here and profiles them briefly on
    this machine, so that `run` uses the fastest per variant. `tune_trials`: tune every TVM graph
    on this machine (see README)."""
    t0 = time.perf_counter()
    tgt = load_target(target)
    names, tgt = _choose_backends(backends, tgt)  # tgt: as compiled for (TVM: host CPU's mcpu)
    out = Path(out).resolve()
    _prepare_out(out)
    tune = _tune_request(tune_trials, tgt, names, out)
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
    try:
        (tmp / "graphs").mkdir(parents=True)
        (tmp / "weights").mkdir()
        manifest, checks = _materialize_all(hm, conds, tmp, tgt, names, parity_inputs, report, tune)
        manifest["model"] = model if isinstance(model, str) else type(hm).__name__
        fmt.write_manifest(tmp, manifest)
        _verify_bundle(tmp, manifest, checks, rtol, report)
        manifest["build_s"] = round(time.perf_counter() - t0, 3)
        fmt.write_manifest(tmp, manifest)
        if backends == ["auto"]:  # a brief profile records the fastest back end per variant
            from ..devtools.profile import profile

            profile(tmp, warmup=3, repeat=30, progress=report)
        _put_in_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return out


def _tune_request(
    trials: int | None, tgt: Target, names: list[str], out: Path
) -> CompileOptions | None:
    """The compile options `--tune-trials` asks for, or None; refused where it cannot run. A
    rebuild over an existing bundle hands its TVM tuning databases on, to start from them."""
    if not trials:
        return None
    if trials < 0:
        raise BuildError(f"--tune-trials must be positive, not {trials}")
    if "tvm" not in names:
        raise BuildError("--tune-trials tunes TVM graphs: add --backend tvm")
    kind = tgt.tvm_target.get("kind")
    if tgt.arch != host_arch() or kind != "llvm":
        raise BuildError(
            f"--tune-trials measures on this machine's CPU; target {tgt.name} ({kind}, "
            f"{tgt.arch}) is not it: build without --tune-trials"
        )
    from ..compilers.tvm.tuning import TUNING_DIR

    previous: list[bytes] = []
    if (out / fmt.MANIFEST).is_file():
        for db in sorted((out / TUNING_DIR).glob("*/records.json")):
            try:
                previous.append(db.read_bytes())
            except OSError:
                continue
    return CompileOptions(tune=TuneRequest(int(trials), tuple(previous)))


def _materialize_all(hm, conds, tmp: Path, tgt: Target, backend_names, n_random, report, tune=None):
    graphs: dict[str, dict[str, Any]] = {}
    programs: dict[str, dict[str, Any]] = {}
    by_arch: dict[str, str] = {}
    block_cache: dict[str, str] = {}  # block source digest -> graph id
    variants, checks = [], []
    gen = torch.Generator().manual_seed(0)
    for i, cond in enumerate(conds):
        label = cond_label(cond)
        report("materialize", i, len(conds))
        target = materialize(hm, cond)
        inputs = tuple(hm.example_inputs(cond))
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise BuildError(f"variant {label}: example_inputs() must return a tuple of tensors")
        vid = f"v{i:04d}"
        prog = _split(target, label)
        if prog is None:
            arch = architecture_signature(target, inputs)
            if arch not in by_arch:
                gid = f"g{len(graphs)}"
                t = time.perf_counter()
                info = export_graph(target, inputs, tmp / "graphs" / f"{gid}.onnx", label)
                graphs[gid] = _graph_entry(gid, arch, info, time.perf_counter() - t)
                _compile_graph(graphs[gid], tmp, tgt, backend_names, tune)
                by_arch[arch] = gid
            g = graphs[by_arch[arch]]
            weight_names, where = g["weights"], {"graph": g["id"]}
            artifacts = dict(g["artifacts"])
            check = _expected(hm, cond, target, inputs, g, gen, 3 if n_random is None else n_random)
        else:
            pid = f"p{len(programs)}"
            n_dyn = n_random if n_random is not None else DYNAMIC_PARITY_INPUTS
            check, program = _build_program(
                prog,
                target,
                inputs,
                tmp,
                tgt,
                backend_names,
                graphs,
                block_cache,
                gen,
                n_dyn,
                tune,
            )
            programs[pid] = program
            weight_names = sorted(
                {w for b in program["blocks"] if b["graph"] for w in graphs[b["graph"]]["weights"]}
            )
            where = {"program": pid}
            used = sorted({b["graph"] for b in program["blocks"] if b["graph"]})
            artifacts = {
                name: [graphs[g]["artifacts"][name] for g in used] for name in backend_names
            }
        state = target.state_dict()
        tensors = {n: _np(state[n]) for n in weight_names}
        wrel = f"weights/{vid}.safetensors"
        nbytes = fmt.write_tensors(tmp / wrel, tensors)
        entry = {
            "id": vid,
            "cond": cond,
            **where,
            "weights": wrel,
            "params": int(sum(t.size for t in tensors.values())),
            "bytes": nbytes,
            "artifacts": artifacts,
        }
        quality = getattr(hm, "quality", None)
        if callable(quality):
            entry["quality"] = float(quality(cond))
        variants.append(entry)
        checks.append(check)
    report("materialize", len(conds), len(conds))
    io_in = [_io(v, graphs, programs)[0] for v in variants]
    io_out = [_io(v, graphs, programs)[1] for v in variants]
    manifest = {
        "schema_version": fmt.SCHEMA_VERSION,
        "producer": {
            "name": "hypercompile",
            "version": __version__,
            "torch": torch.__version__.split("+")[0],
            "onnx_opset": OPSET,
        },
        "target": tgt.to_json(),
        "inputs": _merge_specs(io_in),
        "outputs": _merge_specs(io_out),
        "graphs": graphs,
        "variants": variants,
        "programs": programs,
        "profile": {},
        "files": {},
    }
    return manifest, checks


def _io(variant: dict, graphs: dict, programs: dict) -> tuple[list, list]:
    if "program" in variant:
        p = programs[variant["program"]]
        return p["input_specs"], p["output_specs"]
    g = graphs[variant["graph"]]
    return g["inputs"], g["outputs"]


def _split(target: torch.nn.Module, label: str):
    """The host program of a target with data-dependent control flow, else None. When the
    splitter meets something it cannot handle but forward has no control flow of its own, the
    whole-graph exporter gets its chance (it refuses data-dependent branches itself)."""
    from ..frontend.program import split_module
    from ..frontend.splitter import Unsupported

    try:
        return split_module(target)
    except Unsupported as e:
        if getattr(e, "hard", False) or _forward_has_control(target):
            where = "" if label == cond_label({}) else f"variant {label}: "
            raise UnsupportedModelError(f"{where}{e}") from None
        return None


def _forward_has_control(module: torch.nn.Module) -> bool:
    from ..frontend.splitter import function_ast, has_control_flow

    try:
        node, _, _ = function_ast(type(module).forward)
    except UnsupportedModelError:
        return False
    body = node.body
    if body and isinstance(body[-1], ast.Return):
        body = body[:-1]  # a final return is not control flow
    return has_control_flow(body)


def _compile_graph(
    g: dict, tmp: Path, tgt: Target, backend_names: list[str], tune: CompileOptions | None = None
) -> None:
    """Compile graph `g` with every back end and write what each returns into the bundle: the
    artifact at `<back end>/<graph id><suffix>` (the graph's own path when the artifact is the
    graph), its extra files where they say."""
    onnx = (tmp / g["path"]).read_bytes()
    for name in backend_names:
        art = get_compiler(name).compile(onnx, tgt, graph_id=g["id"], options=tune)
        if art.is_graph:
            rel = g["path"]
        else:
            rel = f"{name}/{g['id']}{art.suffix}"
            _write(tmp, rel, art.data)
        for path, data in art.files.items():
            _write(tmp, path, data)
        g["artifacts"][name] = rel
        if art.info:
            g.setdefault("artifact_info", {})[name] = dict(art.info)
        if name == "tvm":
            tuning = _tuning_entry(art.files, g["id"])
            if tuning is not None:
                g["tvm_tuning"] = tuning


def _write(root: Path, rel: str, data: bytes) -> None:
    path = fmt.safe_path(root, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tuning_entry(files: dict[str, bytes], gid: str) -> dict[str, Any] | None:
    """The manifest's record of a graph's TVM tuning, from the database the TVM compiler
    returned with its artifact (None when it did not tune)."""
    from ..compilers.tvm.tuning import TUNING_DIR

    meta = files.get(f"{TUNING_DIR}/{gid}/tuning.json")
    if meta is None:
        return None
    info = json.loads(meta)
    info.pop("key", None)
    return {"database": f"{TUNING_DIR}/{gid}/records.json", **info}


def _build_program(
    prog, target, inputs, tmp, tgt, backend_names, graphs, block_cache, gen, n_random, tune=None
):
    """Probe the program against eager forward, export every block, and return the parity
    check and the program's manifest entry."""
    from ..frontend import program as P

    names = list(prog.inputs)
    if len(names) != len(inputs):
        raise BuildError(f"forward takes {len(names)} inputs, example_inputs() gave {len(inputs)}")
    sets = [inputs] + [tuple(random_like(x, gen) for x in inputs) for _ in range(n_random)]
    probe = P.Probe(prog, target)
    check = _Check(against="eager forward")
    out_names = None
    with torch.no_grad():
        for xs in sets:
            want_names, want = flatten_outputs(target(*xs))
            got = probe.run({n: x for n, x in zip(names, xs)})
            got_names, got_t = flatten_outputs(got)
            out_names = out_names or want_names
            a, r = parity([_np(t) for t in got_t], [_np(t) for t in want])
            if len(got_t) != len(want) or r > 1e-5:
                raise BuildError(
                    "the split program disagrees with eager forward (max rel error "
                    f"{r:.3g}); this is a hypercompile bug or an unsupported construct"
                )
            check.inputs.append({n: _np(x) for n, x in zip(names, xs)})
            check.expected.append([_np(t) for t in want])
        probe.explore()
    graph_of: dict[int, str] = {}
    for k, b in sorted(prog.blocks.items()):
        if k not in prog.fns:
            continue
        key = P.block_key(prog, b)
        if key not in block_cache:
            gid = f"g{len(graphs)}"
            path = tmp / "graphs" / f"{gid}.onnx"
            t = time.perf_counter()
            weights, ins, outs = P.export_block(prog, b, target, path)
            digest = P.graph_digest(path)
            same = next((g for g in graphs.values() if g.get("digest") == digest), None)
            if same is not None:  # identical subgraph (structure and weight names): store once
                path.unlink()
                block_cache[key] = same["id"]
            else:
                graphs[gid] = {
                    "id": gid,
                    "path": f"graphs/{gid}.onnx",
                    "weights": weights,
                    "inputs": ins,
                    "outputs": outs,
                    "output_names": [o["name"] for o in outs],
                    "dynamic_batch": False,
                    "export_s": round(time.perf_counter() - t, 3),
                    "digest": digest,
                    "artifacts": {},
                }
                _compile_graph(graphs[gid], tmp, tgt, backend_names, tune)
                block_cache[key] = gid
        graph_of[k] = block_cache[key]
    entry = P.program_ir(prog, graph_of).to_json()
    entry["coverage"] = {}
    entry["input_specs"] = [
        {"name": n, "dtype": str(_np(x).dtype), "shape": list(x.shape)}
        for n, x in zip(names, inputs)
    ]
    with torch.no_grad():
        outs = flatten_outputs(target(*inputs))[1]
    entry["output_specs"] = [
        {"name": n, "dtype": str(_np(o).dtype), "shape": list(o.shape)}
        for n, o in zip(out_names, outs)
    ]
    entry["output_names"] = out_names
    return check, entry


def _graph_entry(gid: str, arch: str, info: GraphInfo, export_s: float) -> dict[str, Any]:
    return {
        "id": gid,
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


def _argmax_differs(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    """Whether the first output's predicted class (argmax over the last axis) differs."""
    if not got or not want or got[0].shape != want[0].shape or got[0].ndim == 0:
        return False
    if got[0].dtype.kind != "f":
        return False
    return bool(np.any(np.argmax(got[0], axis=-1) != np.argmax(want[0], axis=-1)))


def _verify_bundle(root: Path, manifest, checks: list[_Check], rtol: float, report) -> None:
    """Hash every file, load the bundle through the runtime, and compare every variant on every
    back end with PyTorch; record parity and refuse the bundle if any exceeds `rtol`. Artifacts
    that cannot run on this machine (another CPU, a GPU it lacks) keep their check cases in the
    bundle, and the runtime runs them on the device before first use."""
    manifest["rtol"] = rtol
    tgt = parse_target(manifest["target"], "the bundle's target")
    used = sorted({b for v in manifest["variants"] for b in v["artifacts"]})
    here = {b: get_runner_factory(b).runs_here(tgt) for b in used}
    for variant, check in zip(manifest["variants"], checks):
        variant["parity"] = {}
        if any(here.get(b) for b in variant["artifacts"]):
            rel = f"checks/{variant['id']}.safetensors"
            (root / "checks").mkdir(exist_ok=True)
            fmt.write_tensors(root / rel, pack_checks(check.inputs, check.expected))
            variant["checks"] = rel
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != fmt.MANIFEST:
            manifest["files"][p.relative_to(root).as_posix()] = fmt.sha256_file(p)
    fmt.write_manifest(root, manifest)
    bundle = Bundle(root, cache_size=1, providers=["CPUExecutionProvider"])
    total = len(manifest["variants"])
    for i, (variant, check) in enumerate(zip(manifest["variants"], checks)):
        report("verify", i, total)
        for backend in variant["artifacts"]:
            if here.get(backend):
                variant["parity"][backend] = {
                    "deferred": f"runs on the device: {here[backend]}",
                    "inputs": len(check.inputs),
                    "against": check.against,
                }
                continue
            worst_abs, worst_rel, mismatched = 0.0, 0.0, 0
            runner = bundle._runner(variant, backend)
            cov = ir.Coverage() if "program" in variant else None
            for feeds, want in zip(check.inputs, check.expected):
                try:
                    got = runner.run(feeds) if cov is None else runner.run(feeds, cov)
                except HypercompileError:
                    raise
                except Exception as e:  # the back end itself failed on this variant
                    first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
                    raise BuildError(
                        f"variant {cond_label(variant['cond'])} on {backend} fails to run: "
                        f"{type(e).__name__}: {first[:200]}"
                    ) from None
                a, r = parity(got, want)
                worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
                mismatched += int(_argmax_differs(got, want))
            variant["parity"][backend] = {
                "max_abs": worst_abs,
                "max_rel": worst_rel,
                "inputs": len(check.inputs),
                "against": check.against,
                "argmax_mismatches": mismatched,
            }
            if cov is not None:
                program = manifest["programs"][variant["program"]]
                program["coverage"] = ir.source_coverage(ir.Program.from_json(program), cov.counts)
            if not worst_rel <= rtol:
                raise ParityError(
                    f"variant {cond_label(variant['cond'])} on {backend}: max rel error "
                    f"{worst_rel:.3g} (max abs {worst_abs:.3g}) exceeds tolerance {rtol:g} "
                    f"against the {check.against}"
                )
    report("verify", total, total)
