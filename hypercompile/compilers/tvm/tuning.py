"""CPU code generation for the TVM back end: the Relax pipeline, default loop schedules without
tuning, weight transforms lifted out of the per-call function (the runner applies them:
`runtime.runners.tvm.transform_weights`), and optional MetaSchedule tuning whose database is
returned for the bundle so that a rebuild starts from it.

TVM 0.27's default CPU pipeline (`relax.backend.cpu_generic`) legalizes every operator to a naive
serial loop nest; dlight ships only GEMV and softmax-style rules for CPUs. `cpu_pipeline` adds:

- `DecomposeOpsForInference` (batch norm -> arithmetic) and `LiftTransformParams`: everything
  that depends on weights only (Gemm's weight transpose, batch-norm scale and shift) moves into
  `main_transform_params`, which the runner calls once per weight set at load;
- dlight's CPU rules, then `CpuDefault`: every remaining loop nest gets its innermost spatial
  loop vectorized (reduction loops moved outside it) and large nests run in parallel;
- with a tuning database, MetaSchedule's records override both for the functions it tuned.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from ..base import TuneRequest

PARALLEL_MIN_WORK = 1 << 18  # multiply-adds (or elements) below which a loop nest stays serial
TUNING_DIR = "tvm/tuning"


def _rules() -> list[Any]:
    from tvm import s_tir, tirx
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import get_extent
    from tvm.target.codegen import llvm_get_vector_width

    class CpuDefault(dl.ScheduleRule):
        """Untuned CPU schedule for any loop nest: inline elementwise chains, put reduction loops
        outside the innermost spatial loop and vectorize it, parallelize the outer loops when the
        nest does enough work."""

        def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if not infos:
                return None
            lanes = max(llvm_get_vector_width(target) // 32, 4)
            infos = self._inline(sch, infos)
            for info in infos:
                try:
                    self._one(sch, info, lanes)
                except Exception:  # noqa: BLE001  # leave this nest serial; parity still checks
                    continue
            return sch

        @staticmethod
        def _inline(sch: Any, infos: list[Any]) -> list[Any]:
            """Inline injective blocks into injective consumers (bias + relu -> one pass); never
            into a reduction (a padded read in a vectorized loop would scalarize it)."""
            alive = list(infos)
            for info in infos:
                if not info.is_injective() or len(alive) < 2:
                    continue
                consumers = [sch.get(c) for c in sch.get_consumers(info.block_rv)]
                inj = [sch.get(o.block_rv) for o in alive if o.is_injective() and o is not info]
                if consumers and all(any(c.same_as(o) for o in inj) for c in consumers):
                    try:
                        sch.compute_inline(info.block_rv)
                    except Exception:  # noqa: BLE001
                        continue
                    alive.remove(info)
            return alive

        @staticmethod
        def _one(sch: Any, info: Any, lanes: int) -> None:
            block = info.block_rv
            loops = sch.get_loops(block)
            kinds = [it.kind for it in info.iters]
            if len(kinds) != len(loops) or "O" in kinds or not loops:
                return
            extents = [get_extent(sch, lp) for lp in loops]
            spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
            reduce = [lp for lp, k in zip(loops, kinds) if k == "R"]
            work = 1
            for e in extents:
                work *= e if isinstance(e, int) else 1
            if not spatial:
                return
            last = spatial[-1]
            n = get_extent(sch, last)
            if not isinstance(n, int):
                return
            if not reduce:  # elementwise: fuse the static tail, vectorize it
                static = []
                for lp in reversed(loops):
                    if not isinstance(get_extent(sch, lp), int):
                        break
                    static.insert(0, lp)
                tail = sch.fuse(*static) if len(static) > 1 else static[0]
                size = get_extent(sch, tail)
                if size < lanes:
                    return
                outer, inner = sch.split(tail, factors=[None, lanes])
                sch.vectorize(inner)
                head = sch.get_loops(block)[:-1]
                if work >= PARALLEL_MIN_WORK and head:
                    sch.parallel(sch.fuse(*head) if len(head) > 1 else head[0])
                return
            tile = n if n <= 64 else next((t for t in (64, 32, 16) if n % t == 0), 64)
            if tile < n:
                last_o, last_i = sch.split(last, factors=[None, tile])
                outer = spatial[:-1] + [last_o]
            else:
                last_i, outer = last, spatial[:-1]
            sch.reorder(*outer, *reduce, last_i)
            if work >= PARALLEL_MIN_WORK and outer:
                sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
            if tile < lanes:
                return
            inner = sch.get_loops(block)[-1]
            if get_extent(sch, inner) > lanes:
                unrolled, inner = sch.split(inner, factors=[None, lanes])
                sch.unroll(unrolled)
            sch.vectorize(inner)  # before decompose_reduction: the update block is no longer
            sch.decompose_reduction(block, reduce[0])  # a reduction block afterwards

    class RowReduction(dl.cpu.Reduction):
        """dlight's softmax / norm rule, only where a reduction drops an axis that the
        elementwise blocks keep (it would otherwise take a matmul and run it serially)."""

        def apply(self, func: Any, target: Any, tunable: bool) -> Any:
            if not isinstance(func, tirx.PrimFunc):
                return None
            infos = normalize_prim_func(s_tir.Schedule(func))
            if not infos:
                return None
            width = [len(i.dom_kind()) - len(i.dom_kind().lstrip("S")) for i in infos]
            red = [w for w, i in zip(width, infos) if not i.is_injective()]
            inj = [w for w, i in zip(width, infos) if i.is_injective()]
            if not red or not inj or max(inj) <= max(red):
                return None
            return super().apply(func, target, tunable)

    return [dl.cpu.GEMV(), RowReduction(), CpuDefault()]


def cpu_pipeline(target: Any, records: dict[str, Any] | None = None) -> Any:
    """The Relax pass pipeline for an `llvm` target (see the module docstring); functions that
    `records` (from `tune`) has a tuned trace for take it instead of the default schedule."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0, name="HypercompileCpuPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            mod = lower_to_tir(mod)
            if records:
                with _without_tensor_intrinsics():
                    mod = apply_records(records, target)(mod)
            passes = [dl.ApplyDefaultSchedule(*_rules())]
            passes += cpu_generic.dataflow_lower_passes(target)
            passes += cpu_generic.finalize_passes(target)
            mod = tvm.transform.Sequential(passes)(mod)
        return mod

    return _pipeline


def lower_to_tir(mod: Any) -> Any:
    """Relax -> fused TIR functions, with weight-only computations lifted into
    `main_transform_params` (run once per weight set, not per call)."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.LiftTransformParams(),
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ]
    )(mod)


def compile_module(
    mod: Any, target: Any, request: TuneRequest | None
) -> tuple[Any, dict[str, bytes]]:
    """`tvm.compile` for `target`: an `llvm` target gets `cpu_pipeline` (tuned first when
    `request` asks); other targets keep TVM's default pipeline. Returns the executable and the
    tuning database's files (`records.json`, `tuning.json`; none when not tuned)."""
    import tvm

    if target.kind.name != "llvm":
        return tvm.compile(mod, target=target), {}
    records, files = None, {}
    if request is not None and request.trials > 0:
        spec = dict(target.export())
        spec.setdefault("num-cores", _physical_cores())
        target = tvm.target.Target({k: v for k, v in spec.items() if k in _TARGET_KEYS})
        records, info = tune(mod, target, request)
        files = database_files(records, info)
    return tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, records)), files


_TARGET_KEYS = ("kind", "mcpu", "mtriple", "mattr", "num-cores", "host")


def _physical_cores() -> int:
    from tvm.s_tir.meta_schedule.utils import cpu_count

    return int(cpu_count(logical=False))


# -- MetaSchedule ------------------------------------------------------------------------------


def _key(mod: Any, target: Any) -> str:
    from tvm_ffi import structural_hash

    spec = json.dumps(dict(target.export()), sort_keys=True, default=str)
    return f"{structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x} {spec}"


def _static(func: Any) -> bool:
    import tvm

    dims = []
    for p in func.params:
        try:
            dims += list(p.shape)
        except AttributeError:  # a scalar parameter (a symbolic dimension)
            return False
    return all(isinstance(d, tvm.tirx.IntImm) for d in dims)


def _workloads(lowered: Any) -> tuple[dict[str, Any], int]:
    """The per-call TIR functions of `lowered` with static shapes, by structural hash (not the
    weight transform, which runs once per weight set), and how many have a dynamic shape
    (MetaSchedule cannot measure those; they keep the default schedule)."""
    import tvm
    from tvm import relax, tirx
    from tvm_ffi import structural_hash

    main = relax.transform.DeadCodeElimination(["main"])(lowered)
    out, dynamic = {}, 0
    for gv, func in main.functions_items():
        if isinstance(func, tirx.PrimFunc) and "tirx.is_scheduled" not in func.attrs:
            if not _static(func):
                dynamic += 1
                continue
            mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
            out[f"{structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"] = (gv.name_hint, mod)
    return out, dynamic


class _Measure:
    """Build and time one TIR function in this process. MetaSchedule's own builder, runner and
    search strategies copy IR through JSON serialization, which segfaults (`ToJSONGraph`) with
    apache-tvm 0.27.0.post1 + apache-tvm-ffi 0.1.15; design-space sampling, postprocessors and
    trace replay do not, so the search loop lives here."""

    def __init__(self, target: Any, mod: Any):
        import numpy as np
        import tvm

        self.tvm, self.target, self.dev = tvm, target, tvm.cpu()
        rng = np.random.default_rng(0)
        self.args = []
        for p in mod["main"].params:
            shape, dtype = [int(d) for d in p.shape], str(p.dtype)
            # integers are indices (gather, take): zeros stay in bounds; a candidate runs in
            # this process, and an out-of-bounds read would take the build down with it
            data = (
                rng.standard_normal(shape).astype(dtype)
                if np.dtype(dtype).kind == "f"
                else np.zeros(shape, dtype)
            )
            self.args.append(tvm.runtime.tensor(data, self.dev))

    def seconds(self, mod: Any) -> float:
        lib = self.tvm.tirx.build(mod, target=self.target)
        f = lib.time_evaluator(lib.entry_name, self.dev, number=5, repeat=5, min_repeat_ms=2)
        return float(sorted(f(*self.args).results)[2])


@contextlib.contextmanager
def _without_tensor_intrinsics() -> Iterator[None]:
    """MetaSchedule imports `tvm.s_tir.tensor_intrin` to create a tune context: ~500 TVMScript
    functions (int8 / tensor-core intrinsics) parsed at import, 25 s to minutes here. The
    float32 LLVM rules use none of them, so a placeholder stands in while we tune."""
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    stub = types.ModuleType(name)
    sys.modules[name] = stub
    try:
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]


def _default_seconds(mod: Any, target: Any) -> float:
    """The time of `mod` under the untuned default schedule (what tuning has to beat)."""
    import tvm
    from tvm.s_tir import dlight as dl

    with target:  # on a fresh module: ApplyDefaultSchedule updates the one it is given
        default = dl.ApplyDefaultSchedule(*_rules())(tvm.IRModule({"main": mod["main"]}))
    return _Measure(target, mod).seconds(default)


def _search(mod: Any, target: Any, trials: int, seed: int, bar: float) -> tuple[Any, float, int]:
    """Random search over MetaSchedule's LLVM design space for one TIR function: sample
    `trials` schedules (its schedule rules, then its postprocessors), time each, and return the
    best as TVMScript (None when none beats `bar`, the default schedule's time), its time and
    how many candidates built and ran."""
    from tvm.s_tir.meta_schedule.utils import fork_seed

    measure = _Measure(target, mod)
    best, best_s, ok = None, bar, 0
    for rand in fork_seed(seed, n=trials):
        try:
            ctx = _context(mod, target, rand)
            sch = ctx.generate_design_space()[0]
            if not all(p.apply(sch) for p in ctx.space_generator.postprocs):
                continue
            t = measure.seconds(sch.mod)
        except Exception:  # noqa: BLE001  # an invalid candidate
            continue
        ok += 1
        if t < best_s:
            best, best_s = sch.mod, t
    # TVMScript, not the trace: replaying a trace read back from JSON fails in this TVM build,
    # and the scheduled function is exactly what was measured
    return (best.script() if best is not None else None), best_s, ok


def _context(mod: Any, target: Any, rand: int) -> Any:
    """A tune context whose design-space generation samples with `rand`. MutateComputeLocation
    and MutateParallel crash at initialization here (the same serialization fault), and random
    search needs no mutators."""
    from tvm.s_tir import meta_schedule as ms

    space = ms.space_generator.PostOrderApply(
        sch_rules=ms.ScheduleRule.create("llvm"),
        postprocs=ms.Postproc.create("llvm"),
        mutator_probs={},
    )
    return ms.TuneContext(
        mod=mod, target=target, space_generator=space, rand_state=rand, num_threads=1
    )


def _find_previous(previous: tuple[bytes, ...], key: str) -> dict[str, Any] | None:
    """The records of the previous bundle's database tuned for the same lowered module and
    target, if any (`previous`: the contents of its `records.json` files)."""
    for data in previous:
        try:
            db = json.loads(data)
            if isinstance(db, dict) and db.get("key") == key:
                records = db["records"]
                if isinstance(records, dict):
                    return records
        except (ValueError, KeyError, TypeError):
            continue
    return None


def tune(mod: Any, target: Any, request: TuneRequest) -> tuple[Any, dict[str, Any]]:
    """Tune the per-call TIR functions of `mod` for `request.trials` trials in all (spread over
    the functions). A matching database of the previous bundle (same lowered module, same TVM
    target) is the starting point: its records are kept, and functions it already tuned for as
    many trials are not searched again. Returns the records to compile with (the bundle's
    `records.json`, see `database_files`) and what happened (its `tuning.json`)."""
    with target:
        lowered = lower_to_tir(mod)
    with _without_tensor_intrinsics():
        return _tune(lowered, target, request)


def database_files(records: dict[str, Any], info: dict[str, Any]) -> dict[str, bytes]:
    """A tuning database as the bundle keeps it: `records.json` (what `tune` found, under its
    key) and `tuning.json` (what happened)."""
    return {
        "records.json": (json.dumps({"key": info["key"], "records": records}) + "\n").encode(),
        "tuning.json": (json.dumps(info, indent=1) + "\n").encode(),
    }


def _tune(lowered: Any, target: Any, request: TuneRequest) -> tuple[Any, Any]:
    key = _key(lowered, target)
    works, dynamic = _workloads(lowered)
    old = _find_previous(request.previous, key)
    records: dict[str, dict[str, Any]] = dict(old) if old is not None else {}
    t = time.perf_counter()
    run = 0
    left = request.trials - sum(r.get("trials", 0) for r in records.values())
    if left > 0 and works:
        # trials go where the time is: in proportion to each function's default time
        base = {h: _default_seconds(fmod, target) for h, (_, fmod) in works.items()}
        total = sum(base.values()) or 1.0
        share = {h: int(round(left * s / total)) for h, s in base.items()}
        top = max(base, key=base.get)
        share[top] += left - sum(share.values())  # rounding: the slowest function gets the rest
        for i, (h, (name, fmod)) in enumerate(sorted(works.items())):
            todo = max(share[h], 0)
            if not todo:
                continue
            prev = records.get(h, {})
            bar = min(base[h], prev.get("seconds") or base[h])
            script, best_s, ok = _search(fmod, target, todo, len(records) + i, bar)
            run += todo
            entry = dict(prev) or {"task": name, "script": None, "seconds": None}
            entry["trials"] = prev.get("trials", 0) + todo
            entry["measured"] = prev.get("measured", 0) + ok
            entry["default_seconds"] = base[h]
            if script is not None:
                entry["script"], entry["seconds"] = script, best_s
            records[h] = entry
    seconds = time.perf_counter() - t
    info = {
        "key": key,
        "functions": len(works),
        "dynamic_functions": dynamic,
        "trials": request.trials,
        "trials_run": run,
        "measured": sum(r.get("measured", 0) for r in records.values()),
        "tuned_functions": sum(1 for r in records.values() if r.get("script")),
        "tuning_s": round(seconds, 3),
        "reused": old is not None,
    }
    return records, info


def apply_records(records: dict[str, dict[str, Any]], target: Any) -> Any:
    """A module pass that replays the tuned trace of every TIR function with a record (by
    structural hash) and marks it scheduled, so default schedules leave it alone."""
    import tvm
    from tvm import tirx
    from tvm_ffi import structural_hash

    @tvm.transform.module_pass(opt_level=0, name="HypercompileApplyTuning")
    def _apply(mod: Any, _ctx: Any) -> Any:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or "tirx.is_scheduled" in func.attrs:
                continue
            one = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
            rec = records.get(f"{structural_hash(one) & 0xFFFFFFFFFFFFFFFF:016x}")
            if not rec or not rec.get("script"):
                continue
            try:
                new = tvm.script.from_source(rec["script"])["main"]
            except Exception:  # noqa: BLE001  # a record this TVM cannot read: default schedule
                continue
            new = new.with_attr("tirx.is_scheduled", True)
            if "global_symbol" in func.attrs:
                new = new.with_attr("global_symbol", func.attrs["global_symbol"])
            else:
                new = new.without_attr("global_symbol")
            updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _apply
