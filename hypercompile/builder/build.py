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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compilers import CompileOptions, TuneRequest, compiler_names, get_compiler
from ..core import ir
from ..core import tensors as fmt
from ..core.conditions import as_json, cond_key, cond_problem, show, value_key
from ..core.manifest import (
    MANIFEST,
    PLAIN_SCHEMA,
    SCHEMA_VERSION,
    Graph,
    Manifest,
    Producer,
    ProgramEntry,
    StateSpec,
    TensorRef,
    TensorSpec,
    Variant,
)
from ..core.targets import Target, host_arch, load_target
from ..errors import (
    BackendError,
    BuildError,
    BundleError,
    UnsupportedModelError,
)
from ..frontend.clone import clone_module
from ..frontend.export import OPSET, GraphInfo, export_graph
from ..frontend.loader import example_tuple, resolve_model
from ..frontend.materialize import (
    architecture_signature,
    cond_label,
    flatten_outputs,
    materialize,
)
from ..frontend.state import find_state
from ..runtime.checks import parity
from ..version import __version__
from .generate import WEIGHT_DTYPES, StoragePlan, stored_form
from .inputs import (
    ParityOptions,
    constant_outputs,
    parity_sets,
    random_like,
    source_of,
    untested_message,
)
from .verify import Check, verify_bundle

Progress = Callable[[str, int, int], None]
DYNAMIC_PARITY_INPUTS = 200
RESIZED_BATCH = 3  # a second batch size a program is probed and checked at, to run at any
RESIZED_SETS = 50  # parity input sets tried at that size
STREAM_PARITY_CALLS = 20  # a stateful variant is checked over this many calls in a row
DEFAULT_RTOL = 1e-4
FP16_RTOL = 1e-2  # the default tolerance with --weights fp16 (float16 keeps ~3 digits)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def select_conditions(conds: Iterable[dict], where: dict[str, list[Any]] | None) -> list[dict]:
    """Conditions whose values for every `where` key are among the allowed ones (equal as JSON).
    Every condition must be a dict of str -> JSON value, and no two may be equal as JSON."""
    conds = list(conds)
    seen: dict[str, dict] = {}
    for c in conds:
        problem = cond_problem(c)
        if problem:
            raise BuildError(f"condition {c!r}: {problem}; conditions are dicts of str -> JSON")
        key = cond_key(c)
        if key in seen:
            raise BuildError(f"conditions {seen[key]!r} and {c!r} are the same")
        seen[key] = c
    conds = [dict(c) for c in conds]
    if not where:
        return conds
    keys = {k for c in conds for k in c}
    for k in where:
        if k not in keys:
            raise BuildError(f"--where {k}: the model's conditions have no key {k!r}")
    for k, vs in where.items():
        have = {value_key(c[k]) for c in conds if k in c}
        missing = [show(v) for v in vs if value_key(v) not in have]
        if missing:
            values = sorted({show(c[k]) for c in conds if k in c})
            raise BuildError(
                f"--where {k}: no condition has {k}={', '.join(missing)} ({k} takes "
                f"{', '.join(values[:12])}{' ...' if len(values) > 12 else ''})"
            )
    allowed = {k: {value_key(v) for v in vs} for k, vs in where.items()}
    chosen = [
        c for c in conds if all(k in c and value_key(c[k]) in ok for k, ok in allowed.items())
    ]
    if not chosen:
        shown = {k: sorted({show(c[k]) for c in conds if k in c}) for k in where}
        takes = "; ".join(
            f"{k} takes {', '.join(vs[:12])}{' ...' if len(vs) > 12 else ''}"
            for k, vs in shown.items()
        )
        raise BuildError(f"no condition satisfies --where ({takes})")
    return chosen


def _why_not(name: str, tgt: Target) -> str | None:
    """Why back end `name` cannot build for `tgt` on this machine, or None. The target is
    judged as the compiler compiles for it (a TVM tag expanded: a CUDA tag needs nvcc); an
    unknown TVM tag is a BuildError, not a reason to leave TVM out."""
    if name not in compiler_names():
        return f"unknown back end {name!r} (known: {', '.join(compiler_names())})"
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
    """`out` may be replaced only when it is missing, an empty directory, or a bundle (its
    manifest.json says hypercompile made it): a directory that merely holds a manifest.json
    (a web app's) is never taken for one."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise BuildError(f"{out} exists and is not a bundle directory; refusing to overwrite it")
    if not any(out.iterdir()):
        return
    try:
        data = json.loads((out / MANIFEST).read_bytes())
        ours = data["producer"]["name"] == "hypercompile" and "variants" in data
    except (OSError, ValueError, TypeError, KeyError):
        ours = False
    if not ours:
        raise BuildError(f"{out} exists and is not a bundle; refusing to overwrite it")


def _put_in_place(tmp: Path, out: Path) -> None:
    """Move the finished bundle `tmp` to `out`. An existing bundle is swapped out in one atomic
    step where the system can (Linux renameat2 RENAME_EXCHANGE): `out` is never missing, and
    a kill at any point leaves either the old or the new bundle there."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # the old bundle, now under the temporary name
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two directories; False where the system cannot."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def build(
    model: Any,
    target: str | Path | Target | None = None,
    out: str | Path = "build/bundle",
    *,
    backends: list[str] | None = None,
    where: dict[str, list[Any]] | None = None,
    rtol: float | None = None,
    parity_inputs: int | None = None,
    parity_data: str | Path | None = None,
    allow_untested: bool = False,
    example_inputs: Any = None,
    progress: Progress | None = None,
    tune_trials: int | None = None,
    storage: str = "auto",
    weights: str = "fp32",
    max_switch_ms: float | None = None,
    calib_data: str | Path | None = None,
    tune_rpc: str | None = None,
    tune_key: str | None = None,
) -> Path:
    """Build a bundle for `model` (reference, HyperModel or nn.Module) and return its path.
    `backends=["auto"]` builds every back end that can build here and profiles them briefly on
    this machine, so that `run` uses the fastest per variant. `tune_trials`: tune every TVM graph
    with MetaSchedule, measured on this machine, or with `tune_rpc="HOST:PORT"` and `tune_key`
    on the board registered under that key at that TVM RPC tracker (see docs/backends.md).
    `example_inputs` (a plain nn.Module's: a tensor, a tuple of
    tensors, or a dict forward parameter name -> tensor) win over the module's own.
    `storage`: "auto" (default), "materialize" or "generate": how each architecture's weights
    are stored when the model has a `generator()` (see `builder/generate.py`; `max_switch_ms`
    bounds the generator's switch time under auto). `weights="fp16"` stores floating weights
    as float16, bound as float32; `rtol` then defaults to FP16_RTOL instead of 1e-4.
    `calib_data`: a folder of int8 calibration inputs for TensorRT (one NAME.npy per input, the
    first axis stacking samples), for targets whose `tensorrt_precision` is int8."""
    t0 = time.perf_counter()
    if weights not in WEIGHT_DTYPES:
        raise BuildError(f"weights must be one of {', '.join(WEIGHT_DTYPES)}, not {weights!r}")
    if rtol is None:
        rtol = FP16_RTOL if weights == "fp16" else DEFAULT_RTOL
    tgt = load_target(target)
    names, tgt = _choose_backends(backends, tgt)  # tgt: as compiled for (TVM: host CPU's mcpu)
    out = Path(out).resolve()
    _prepare_out(out)
    tune = _tune_request(tune_trials, tgt, names, out, tune_rpc, tune_key)
    if calib_data is not None:
        tune = _with_calibration(tune, Path(calib_data), tgt, names)
    hm = resolve_model(model, example_inputs)
    plan = StoragePlan(hm, storage, weights == "fp16", tgt, max_switch_ms)
    conds = select_conditions(hm.conditions(), where)
    if not conds:
        raise BuildError("the model declares no conditions")
    report = progress or (lambda stage, done, total: None)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # Parity forwards are tiny: one thread avoids oversubscription stalls on shared machines.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (tmp / "graphs").mkdir(parents=True)
        (tmp / "weights").mkdir()
        opts = ParityOptions(
            parity_inputs, Path(parity_data) if parity_data else None, allow_untested
        )
        manifest, checks = _materialize_all(hm, conds, tmp, tgt, names, opts, report, plan, tune)
        _finalize_artifacts(tmp, manifest, names, tune)
        manifest.model = model if isinstance(model, str) else type(hm).__name__
        manifest.selectable = _selectable(hm, conds)
        verify_bundle(tmp, manifest, checks, rtol, report)
        manifest.build_s = round(time.perf_counter() - t0, 3)
        _keep_profiles(out, manifest)
        manifest.dump(tmp)
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


def _keep_profiles(out: Path, manifest: Manifest) -> None:
    """A rebuild keeps the old bundle's profiles of the variants whose graph, weights and
    artifacts did not change (see `devtools.profile.carry_profiles`)."""
    if not (out / MANIFEST).is_file():
        return
    from ..devtools.profile import carry_profiles

    try:
        old = Manifest.load(out)
    except (BundleError, OSError):
        return  # not readable: nothing to keep
    carry_profiles(old, manifest)


def _selectable(hm: Any, conds: list[dict]) -> list[str]:
    """The condition keys a latency budget may choose (`HyperModel.selectable()`: versions of
    one model, such as a width or an exit configuration, never a task); none when the model
    does not say."""
    method = getattr(hm, "selectable", None)
    if not callable(method):
        return []
    keys = method()
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise BuildError(f"selectable() must return a list of condition keys, not {keys!r}")
    known = {k for c in conds for k in c}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise BuildError(
            f"selectable() names {', '.join(unknown)}, which no condition has "
            f"(keys: {', '.join(sorted(known)) or 'none'})"
        )
    return list(dict.fromkeys(keys))


def _remove_abandoned(out: Path) -> None:
    """Remove the temporary directories of earlier builds of `out` whose process is gone (one
    killed before it could clean up): `.NAME.tmp-PID-XXXXXXXX`."""
    for old in out.parent.glob(f".{out.name}.tmp-*"):
        pid = old.name.rpartition(".tmp-")[2].split("-")[0]
        if not pid.isdigit() or not old.is_dir() or old.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue  # alive, someone else's


def _tune_request(
    trials: int | None,
    tgt: Target,
    names: list[str],
    out: Path,
    rpc: str | None = None,
    key: str | None = None,
) -> CompileOptions | None:
    """The compile options `--tune-trials` asks for, or None; refused where it cannot run. A
    rebuild over an existing bundle hands its TVM tuning databases on, to start from them."""
    if not trials:
        if rpc or key:
            raise BuildError("--tune-rpc and --key tune on a board: add --tune-trials N")
        return None
    if trials < 0:
        raise BuildError(f"--tune-trials must be positive, not {trials}")
    if "tvm" not in names:
        raise BuildError("--tune-trials tunes TVM graphs: add --backend tvm")
    kind = tgt.tvm_target.get("kind")
    where = None
    if rpc is not None:
        host, sep, port = rpc.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BuildError(f"--tune-rpc {rpc!r} must look like HOST:PORT")
        if not key:
            raise BuildError("--tune-rpc needs --key (the device key the board registered with)")
        where = (host, int(port), key)
    elif key:
        raise BuildError("--key names a board for --tune-rpc HOST:PORT: add --tune-rpc")
    if kind != "llvm" or tgt.arch != host_arch():
        how = "a board through --tune-rpc" if where else "this machine's CPU"
        raise BuildError(
            f"--tune-trials tunes CPU code built for this machine's architecture and measured "
            f"on {how}; target {tgt.name} ({kind}, {tgt.arch}) is not: build without "
            "--tune-trials (GPU and cross-architecture tuning are not implemented)"
        )
    from ..compilers.tvm.tuning import DB_FILES, TUNING_DIR

    previous: list[tuple[str, dict[str, bytes]]] = []
    if (out / MANIFEST).is_file():
        for folder in sorted((out / TUNING_DIR).glob("*/")):
            try:
                files = {n: (folder / n).read_bytes() for n in (*DB_FILES, "tuning.json")}
            except OSError:
                continue
            previous.append((folder.name, files))
    return CompileOptions(tune=TuneRequest(int(trials), tuple(previous), where))


def _with_calibration(
    options: CompileOptions | None, folder: Path, tgt: Target, names: list[str]
) -> CompileOptions:
    """The compile options with int8 calibration data, which only TensorRT at int8 takes."""
    if "tensorrt" not in names or tgt.tensorrt_precision != "int8":
        builds = f"TensorRT at {tgt.tensorrt_precision}" if "tensorrt" in names else "no TensorRT"
        raise BuildError(
            f"--calib-data calibrates TensorRT int8 engines; this build for {tgt.name} makes "
            f"{builds}"
        )
    if not folder.is_dir():
        raise BuildError(f"--calib-data {folder} is not a folder")
    return CompileOptions(tune=options.tune if options else None, calib_data=folder)


def _finalize_artifacts(
    tmp: Path, manifest: Manifest, names: list[str], options: CompileOptions | None
) -> None:
    """Let each compiler complete its artifacts now that every variant is known (TensorRT:
    which weights vary between the variants of a graph), rewriting what it changes."""
    for g in manifest.graphs.values():
        sets = [  # a weight a generator makes differs per variant
            {n: v.weights.get(n, f"generated:{v.id}") for n in g.weights}
            for v in manifest.variants
            if g.id in manifest.graphs_of(v)
        ]
        for name in names:
            rel = g.artifacts.get(name)
            if rel is None:
                continue
            done = get_compiler(name).finalize(
                (tmp / rel).read_bytes(), g, sets, manifest.target, options
            )
            if done is None:
                continue
            _write(tmp, rel, done.data)
            for path, data in done.files.items():
                _write(tmp, path, data)
            if done.info:
                g.artifact_info[name] = dict(done.info)


def _materialize_all(
    hm, conds, tmp: Path, tgt: Target, backend_names, opts: ParityOptions, report, plan, tune=None
):
    graphs: dict[str, Graph] = {}
    programs: dict[str, ProgramEntry] = {}
    by_arch: dict[str, str] = {}
    block_cache: dict[str, str] = {}  # block source digest -> graph id
    variants: list[Variant] = []
    checks: list[Check] = []
    store = fmt.TensorStore()  # each distinct tensor once, in the file of its first variant
    gen = torch.Generator().manual_seed(0)

    def write(v: Variant, tensors: dict[str, np.ndarray]) -> None:
        if plan.half and any(t.dtype == np.float16 for t in tensors.values()):
            raise BuildError("--weights fp16: the model has float16 weights of its own")
        v.weights = {name: store.add(stored_form(t, plan.half)) for name, t in tensors.items()}
        store.flush(tmp, f"weights/{v.id}.safetensors")  # the tensors no variant had before

    for i, cond in enumerate(conds):
        label = cond_label(cond)
        report("materialize", i, len(conds))
        target = materialize(hm, cond)
        inputs = example_tuple(hm.example_inputs(cond), target, f"variant {label}")
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise BuildError(f"variant {label}: example_inputs() must return a tuple of tensors")
        vid = f"v{i:04d}"
        later = torch.Generator().manual_seed(1)
        state = find_state(target, [inputs] + [tuple(random_like(x, later) for x in inputs)], label)
        # the state before the first call, kept apart from anything the export runs
        pristine = clone_module(target) if state else target
        # state is carried through one whole graph; the exporter refuses control flow on data
        prog, said = (None, None) if state else _split(target, label)
        v = Variant(id=vid, cond=as_json(cond), weights={}, artifacts={})
        if prog is None:
            arch = architecture_signature(target, inputs) + (f" state={state}" if state else "")
            if arch not in by_arch:
                gid = f"g{len(graphs)}"
                t = time.perf_counter()
                path = tmp / "graphs" / f"{gid}.onnx"
                info = _export_whole(target, inputs, path, label, state, said)
                graphs[gid] = _graph_entry(gid, arch, info, time.perf_counter() - t)
                _compile_graph(graphs[gid], tmp, tgt, backend_names, tune)
                by_arch[arch] = gid
            g = graphs[by_arch[arch]]
            v.graph, v.artifacts = g.id, dict(g.artifacts)
            weight_names = g.weights
            n = 3 if opts.n_random is None else opts.n_random
            if g.state:
                n = max(n, STREAM_PARITY_CALLS - 1)
            user_names = [s.name for s in g.user_io()[0]]
            sets = parity_sets(hm, cond, inputs, user_names, gen, n, opts.data)
            check = _expected_stream(pristine, sets, g) if g.state else None
            check = check or _expected(hm, cond, target, sets, g, gen)
        else:
            pid = f"p{len(programs)}"
            n = opts.n_random if opts.n_random is not None else DYNAMIC_PARITY_INPUTS
            sets = parity_sets(hm, cond, inputs, list(prog.inputs), gen, n, opts.data)
            ctx = _Ctx(tmp, tgt, backend_names, graphs, block_cache, tune)
            check, programs[pid] = _build_program(prog, target, sets, ctx)
            used = sorted({b.graph for b in programs[pid].host.blocks.values() if b.graph})
            weight_names = sorted({w for g in used for w in graphs[g].weights})
            v.program = pid
            v.artifacts = {
                name: [graphs[g].artifacts[name] for g in used] for name in backend_names
            }
        tensors = {n: _np(t) for n, t in target.state_dict().items() if n in set(weight_names)}
        v.params = int(sum(t.size for t in tensors.values()))
        tensors.update(_initial_state(pristine, graphs[v.graph].state if v.graph else []))
        v.bytes = int(sum(t.nbytes for t in tensors.values()))
        if v.graph is None:
            plan.refuse(v, "a dynamic program's weights are stored, not generated")
        if v.graph is None or not plan.takes(v, graphs[v.graph], target, tensors, inputs):
            write(v, tensors)
        quality = getattr(hm, "quality", None)
        if callable(quality):
            v.quality = float(quality(cond))
        _refuse_untested(check, v, target, opts.allow_untested)
        variants.append(v)
        checks.append(check)
    report("materialize", len(conds), len(conds))
    plan.finish(tmp, graphs, store, write, lambda g: _compile_graph(g, tmp, tgt, ["onnxruntime"]))
    manifest = Manifest(
        producer=Producer(
            "hypercompile", __version__, torch.__version__.split("+")[0], onnx_opset=OPSET
        ),
        target=tgt,
        inputs=_merge_specs([_io(v, graphs, programs)[0] for v in variants]),
        outputs=_merge_specs([_io(v, graphs, programs)[1] for v in variants]),
        graphs=graphs,
        variants=variants,
        programs=programs,
        tensors={tid: TensorRef(rel, tid) for tid, rel in store.files.items()},
        weight_bytes=store.nbytes,
        generators=plan.generators,
        weight_dtype="float16" if plan.half else None,
        schema_version=SCHEMA_VERSION if plan.generators or plan.half else PLAIN_SCHEMA,
    )
    return manifest, checks


def _refuse_untested(check: Check, v: Variant, target, allow: bool) -> None:
    """A check that cannot fail (outputs constant over every parity input, a decision side
    never taken) fails the build, unless `allow`: then it is recorded in the variant."""
    names = [f"#{k}" for k in range(len(check.expected[0]))] if check.expected else []
    problems = [f"{source_of(target)}: {p}" for p in constant_outputs(names, check.expected)]
    problems += check.untested
    if problems and not allow:
        where = f"variant {cond_label(v.cond)}: " if v.cond else ""
        raise BuildError(where + untested_message(problems))
    v.untested = problems


def _io(v: Variant, graphs: dict[str, Graph], programs: dict[str, ProgramEntry]):
    if v.program is not None:
        p = programs[v.program]
        return p.input_specs, p.output_specs
    return graphs[v.graph].user_io()  # type: ignore[index]


def _split(target: torch.nn.Module, label: str):
    """The host program of a target with data-dependent control flow, else None, with why the
    splitter left it to the whole-graph exporter (None when it had nothing to say). When the
    splitter meets something it cannot handle but forward has no control flow of its own, the
    whole-graph exporter gets its chance (it refuses data-dependent branches itself). Library
    layers that assign module state within a call (snntorch neurons) are inlined to carry it;
    when nothing branches on data without them, the target is one static graph (state kept
    between calls was ruled out before)."""
    from ..frontend.program import split_module
    from ..frontend.splitter import Unsupported

    try:
        return split_module(target), None
    except Unsupported as e:
        if getattr(e, "hard", False) and _static_without_state_callees(target):
            return None, None
        if getattr(e, "hard", False) or _forward_has_control(target):
            where = "" if label == cond_label({}) else f"variant {label}: "
            raise UnsupportedModelError(f"{where}{e}") from None
        return None, str(e)


def _export_whole(target, inputs, path: Path, label: str, state, said: str | None) -> GraphInfo:
    """Export the whole target; when that fails and the splitter had given up on it first
    (`said`: why), the splitter's file:line is the better message."""
    try:
        return export_graph(target, inputs, path, label, state)
    except BuildError as e:
        if said is None:
            raise
        raise UnsupportedModelError(f"{said} (and exporting it whole failed: {e})") from None


def _static_without_state_callees(target: torch.nn.Module) -> bool:
    from ..frontend.program import split_module
    from ..frontend.splitter import Unsupported

    try:
        return split_module(target, opaque_state=True) is None
    except Unsupported:
        return False


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
    g: Graph, tmp: Path, tgt: Target, backend_names: list[str], tune: CompileOptions | None = None
) -> None:
    """Compile graph `g` with every back end and write what each returns into the bundle: the
    artifact at `<back end>/<graph id><suffix>` (the graph's own path when the artifact is the
    graph), its extra files where they say."""
    onnx = (tmp / g.path).read_bytes()
    for name in backend_names:
        art = get_compiler(name).compile(onnx, tgt, graph_id=g.id, options=tune)
        if art.is_graph:
            rel = g.path
        else:
            rel = f"{name}/{g.id}{art.suffix}"
            _write(tmp, rel, art.data)
        for path, data in art.files.items():
            _write(tmp, path, data)
        g.artifacts[name] = rel
        if art.info:
            g.artifact_info[name] = dict(art.info)
        if name == "tvm":
            tuning = _tuning_entry(art.files, g.id)
            if tuning is not None:
                g.tvm_tuning = tuning


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
    info.pop("per_function", None)
    return {"database": f"{TUNING_DIR}/{gid}", **info}


@dataclass
class _Ctx:
    """Where a program's block graphs go: the bundle folder, the target and back ends, the
    graphs so far (shared by all variants), and the blocks already exported."""

    tmp: Path
    tgt: Target
    backend_names: list[str]
    graphs: dict[str, Graph]
    block_cache: dict[str, str]
    tune: Any = None


def _build_program(prog, target, sets, ctx: _Ctx) -> tuple[Check, ProgramEntry]:
    """Probe the program against eager forward on every parity input set (the example first),
    export every block, and return the parity check and the program's manifest entry."""
    from ..frontend import program as P

    names = list(prog.inputs)
    inputs = sets[0]
    if len(names) != len(inputs):
        raise BuildError(f"forward takes {len(names)} inputs, example_inputs() gave {len(inputs)}")
    probe = P.Probe(prog, target)
    check = Check(against="eager forward")
    out_names = None
    rejected = 0
    with torch.no_grad():
        for i, xs in enumerate(sets):
            pair = P.parity_pair(probe, target, xs, example=i == 0)
            if pair is None:  # an assert of forward rejects it, in both
                rejected += 1
                continue
            want_names, want = flatten_outputs(pair[0])
            got_names, got_t = flatten_outputs(pair[1])
            out_names = out_names or want_names
            a, r = parity([_np(t) for t in got_t], [_np(t) for t in want])
            if len(got_t) != len(want) or r > 1e-5:
                raise BuildError(
                    "the split program disagrees with eager forward (max rel error "
                    f"{r:.3g}); this is a hypercompile bug or an unsupported construct"
                )
            check.inputs.append({n: _np(x) for n, x in zip(names, xs)})
            check.expected.append([_np(t) for t in want])
        check.untested = [
            f"{prog.filename}:{prog.decisions[name].line}: {_side(side)} of "
            f"`{prog.decisions[name].source}` was never taken"
            for name, side in ir.untaken_sides(prog, probe.counts)
        ]
        if rejected and rejected == len(sets) - 1:
            check.untested.append(
                f"an assert of forward rejects every parity input but the example ({rejected}):"
                " give inputs it accepts (--parity-data, or sample_inputs)"
            )
        probe.explore()
        saved = {k: dict(v) for k, v in prog.examples.items()}
        resized = _probe_resized(prog, target, sets, probe.entered)
    with torch.no_grad():
        outs = flatten_outputs(target(*inputs))[1]
    batch: int | None = None
    if isinstance(resized, str):
        why_fixed = resized
    else:
        why_fixed = None
        batch = int(inputs[0].shape[0])
    try:
        graph_of = _block_graphs(prog, target, ctx)
    except BuildError as e:
        if batch is None:
            raise
        prog.examples.clear()  # the example's batch only, as if never resized
        prog.examples.update(saved)
        why_fixed, batch = f"a block does not export with a dynamic batch ({e})", None
        graph_of = _block_graphs(prog, target, ctx)
    if batch is not None:
        for xs, want in resized:  # type: ignore[union-attr]
            check.inputs.append({n: _np(x) for n, x in zip(names, xs)})
            check.expected.append([_np(t) for t in want])
        other = resized[0][1]  # type: ignore[index]
    entry = ProgramEntry(
        host=P.program_ir(prog, graph_of),
        input_specs=[
            TensorSpec(n, str(_np(x).dtype), ["batch", *x.shape[1:]] if batch else list(x.shape))
            for n, x in zip(names, inputs)
        ],
        output_specs=[
            TensorSpec(
                n, str(_np(o).dtype), _spec_shape(o, other[i], batch) if batch else list(o.shape)
            )
            for i, (n, o) in enumerate(zip(out_names, outs))
        ],
        fixed_batch=why_fixed,
    )
    return check, entry


def _spec_shape(o: torch.Tensor, other: torch.Tensor, batch: int) -> list[int | str | None]:
    """An output's shape as its answers at the example's batch and at `RESIZED_BATCH` show it."""
    dims: list[int | str | None] = []
    for i, d in enumerate(o.shape):
        e = other.shape[i] if i < other.dim() else None
        if d == e:
            dims.append(int(d))
        else:
            dims.append("batch" if i == 0 and d == batch and e == RESIZED_BATCH else None)
    return dims


def _resize(xs: tuple, size: int) -> tuple:
    """An input set with every tensor's leading dimension made `size`: rows cut or repeated."""
    n = xs[0].shape[0]
    reps = -(-size // n)
    return tuple(x.repeat(reps, *[1] * (x.dim() - 1))[:size].clone() for x in xs)


def _probe_resized(prog, target, sets, entered: set[int]):
    """The program run at a second batch size against eager forward: its (inputs, answers)
    pairs, which leave examples of every block at two sizes (so the batch dimension exports
    dynamic), or why the program keeps the example's batch. Forward must take the inputs at
    the other size; the program must agree there and reach every block it reached before."""
    from ..frontend import program as P

    lead = {x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else None for x in sets[0]}
    if len(lead) != 1 or None in lead:
        return "the inputs share no leading (batch) dimension"
    n = lead.pop()
    size = RESIZED_BATCH if n != RESIZED_BATCH else RESIZED_BATCH + 2
    before = {k: dict(v) for k, v in prog.examples.items()}
    probe = P.Probe(prog, target)
    pairs = []
    why = None
    for xs in sets[:RESIZED_SETS]:
        xs = _resize(xs, size)
        try:
            want = target(*[x.clone() for x in xs])
        except Exception as e:  # noqa: BLE001 - forward itself takes only this batch
            why = f"forward does not take a batch of {size}: {_first_line(e)}"
            break
        try:
            pair = P.parity_pair(probe, target, xs, example=False)
        except Exception as e:  # noqa: BLE001
            why = f"the split program fails at a batch of {size}: {_first_line(e)}"
            break
        if pair is None:
            continue
        got = flatten_outputs(pair[1])[1]
        want_t = flatten_outputs(want)[1]
        r = (
            parity([_np(t) for t in got], [_np(t) for t in want_t])[1]
            if len(got) == len(want_t)
            else 1.0
        )
        if r > 1e-5:
            why = f"the split program answers differently at a batch of {size}"
            break
        pairs.append((xs, want_t))
    if why is None:
        try:
            probe.explore()
        except Exception as e:  # noqa: BLE001
            why = f"the split program fails at a batch of {size}: {_first_line(e)}"
    if why is None and not pairs:
        why = f"forward's asserts reject every input at a batch of {size}"
    if why is None and not entered <= probe.entered:
        why = f"some blocks run at a batch of {n} were never reached at a batch of {size}"
    if why is not None:
        prog.examples.clear()
        prog.examples.update(before)
        return why
    return pairs


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _side(side: str) -> str:
    return f"the {side} side" if side in ("then", "else") else f"case {side}"


def _block_graphs(prog, target, ctx: _Ctx) -> dict[int, str]:
    """The graph id of every block that calls one. A block with the same code over the same
    shapes as one exported before shares its graph; the others are exported together in
    worker processes (see `exports`), then each compiled, unless its ONNX bytes equal a graph
    the bundle already has."""
    from ..frontend import program as P
    from .exports import export_in_workers

    calls = [k for k in prog.blocks if k in prog.fns]
    keys = {k: P.block_key(prog, prog.blocks[k]) for k in calls}
    todo: dict[str, Any] = {}  # key -> the first block with it
    for k in calls:
        if keys[k] not in ctx.block_cache:
            todo.setdefault(keys[k], prog.blocks[k])
    paths = {b.id: ctx.tmp / "graphs" / f".block{b.id}.onnx" for b in todo.values()}
    t = time.perf_counter()
    records = export_in_workers(prog, list(todo.values()), target, paths)
    each = (time.perf_counter() - t) / max(len(todo), 1)  # exported together: a share each
    for key, b in todo.items():
        ctx.block_cache[key] = _add_block_graph(paths[b.id], records[b.id], each, ctx)
    return {k: ctx.block_cache[keys[k]] for k in calls}


def _add_block_graph(path: Path, record, export_s: float, ctx: _Ctx) -> str:
    """The id of the graph exported to `path`: an identical graph's (structure and weight
    names: stored once), else a new graph, compiled."""
    from ..frontend import program as P

    weights, ins, outs = record
    digest = P.graph_digest(path)
    same = next((g for g in ctx.graphs.values() if g.digest == digest), None)
    if same is not None:
        path.unlink()
        return same.id
    gid = f"g{len(ctx.graphs)}"
    path.rename(ctx.tmp / "graphs" / f"{gid}.onnx")
    ctx.graphs[gid] = Graph(
        id=gid,
        path=f"graphs/{gid}.onnx",
        weights=weights,
        inputs=[TensorSpec(**i) for i in ins],
        outputs=[TensorSpec(**o) for o in outs],
        export_s=round(export_s, 3),
        digest=digest,
    )
    _compile_graph(ctx.graphs[gid], ctx.tmp, ctx.tgt, ctx.backend_names, ctx.tune)
    return gid


def _graph_entry(gid: str, arch: str, info: GraphInfo, export_s: float) -> Graph:
    return Graph(
        id=gid,
        path=f"graphs/{gid}.onnx",
        arch=arch,
        weights=info.weights,
        inputs=[TensorSpec(**i) for i in info.inputs],
        outputs=[TensorSpec(**o) for o in info.outputs],
        dynamic_batch=info.dynamic_batch,
        export_s=round(export_s, 3),
        exporter=info.exporter,
        fixed_batch=info.fixed_batch_reason,
        state=[StateSpec(**st) for st in info.state],
    )


def _initial_state(target: torch.nn.Module, state: list[StateSpec]) -> dict[str, np.ndarray]:
    """The variant's state before its first call, stored under the graph's state inputs."""
    out = {}
    for s in state:
        path, _, attr = s.key.rpartition(".")
        value = getattr(target.get_submodule(path) if path else target, attr)
        out[s.input] = _np(value)
    return out


def _expected_stream(target: torch.nn.Module, sets, graph: Graph) -> Check:
    """Check cases for a stateful variant: the parity sets as one sequence of calls, answered by
    a fresh copy of the target that keeps its state from call to call (a batch of 3 would change
    the state's shape, so none is added)."""
    model = clone_module(target)
    check = Check(against=f"target over {len(sets)} calls in a row")
    names = [s.name for s in graph.user_io()[0]]
    with torch.no_grad():
        for xs in sets:
            check.inputs.append({n: _np(x) for n, x in zip(names, xs)})
            check.expected.append([_np(t) for t in flatten_outputs(model(*xs))[1]])
    return check


def _merge_specs(spec_lists: list[list[TensorSpec]]) -> list[TensorSpec]:
    """Bundle-level I/O: names and dtypes all graphs share; a dim that differs becomes null."""
    first = spec_lists[0]
    merged = []
    for i, spec in enumerate(first):
        others = [s[i] for s in spec_lists[1:] if i < len(s)]
        if any(o.name != spec.name or o.dtype != spec.dtype for o in others):
            raise BuildError(
                f"variants disagree on input/output {spec.name!r}: every variant must keep "
                "the same names and dtypes"
            )
        shape = [
            d if all(len(o.shape) == len(spec.shape) and o.shape[j] == d for o in others) else None
            for j, d in enumerate(spec.shape)
        ]
        merged.append(TensorSpec(spec.name, spec.dtype, shape))
    return merged


def _expected(hm, cond, target, sets, graph: Graph, gen) -> Check:
    """Check inputs (the parity sets, + one batch of 3 when batch is dynamic) and the answers
    of the reference path (hypernet + target) when the model has one, else of the target."""
    reference = getattr(hm, "reference", None)
    check = Check(against="reference" if callable(reference) else "target")
    if graph.dynamic_batch:
        sets = sets + [tuple(random_like(x, gen, batch=3) for x in sets[0])]
    names = graph.input_names
    # a reference runs the hypernet, which may need autograd (see materialize)
    with torch.set_grad_enabled(callable(reference)):
        for xs in sets:
            out = reference(cond, *xs) if callable(reference) else target(*xs)
            check.inputs.append({n: _np(x) for n, x in zip(names, xs)})
            check.expected.append([_np(t) for t in flatten_outputs(out)[1]])
    return check
