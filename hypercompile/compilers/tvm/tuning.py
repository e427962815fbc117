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
- with a tuning database (MetaSchedule's evolutionary search, `tune`), the schedule it found
  replaces the default one for each function where it measured faster.
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


def cpu_pipeline(target: Any, database: dict[str, bytes] | None = None) -> Any:
    """The Relax pass pipeline for an `llvm` target (see the module docstring); functions that
    `database` (the files `tune` returned) has a faster schedule for take it instead of the
    default one."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0, name="HypercompileCpuPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            mod = lower_to_tir(mod)
            if database:
                with _without_tensor_intrinsics():
                    mod = apply_database(database, target)(mod)
            passes = [dl.ApplyDefaultSchedule(*_rules())]
            passes += cpu_generic.dataflow_lower_passes(target)
            passes += cpu_generic.finalize_passes(target)
            mod = tvm.transform.Sequential(passes)(mod)
        return mod

    return _pipeline


def with_static_batch(mod: Any) -> Any:
    """`mod` with, next to a `main` whose inputs have a dynamic batch (the symbolic `batch`),
    `main` specialized at the runtime's STATIC_BATCH: static shapes get better default
    schedules, and only static functions can be tuned. The runner calls it at that batch and
    `main` at any other; parity checks both (the build probes two batch sizes)."""
    import tvm
    import tvm_ffi
    from tvm import relax

    from ...runtime.runners.tvm import STATIC_BATCH, STATIC_MAIN

    main = mod["main"]
    n_in = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else 0
    batch = set()
    for p in list(main.params)[:n_in]:
        shape = getattr(getattr(getattr(p, "ty", None), "shape", None), "values", None)
        if shape:
            batch.add(shape[0])
    (var,) = batch if len(batch) == 1 else (None,)
    if var is None or isinstance(var, tvm.tirx.IntImm):
        return mod  # a static batch, or inputs that do not share one
    try:
        one = relax.transform.BindSymbolicVars({var: STATIC_BATCH}, "main")(
            tvm.IRModule({"main": main})
        )["main"]
    except Exception:  # noqa: BLE001  # leave it dynamic
        return mod
    if tvm_ffi.structural_equal(one, main):
        return mod
    out = tvm.IRModule(dict(mod.functions_items()))
    out[STATIC_MAIN] = one.with_attr("global_symbol", STATIC_MAIN)
    return out


def lower_to_tir(mod: Any) -> Any:
    """Relax -> fused TIR functions, with weight-only computations lifted into
    `main_transform_params` (run once per weight set, not per call), or `transform_params`
    shared with `main`'s batch-specialized copy (`with_static_batch`)."""
    import tvm
    from tvm import relax

    from ...runtime.runners.tvm import STATIC_MAIN

    shared = any(gv.name_hint == STATIC_MAIN for gv in mod.get_global_vars())
    return tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.LiftTransformParams(shared_transform=shared),
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
    mod: Any, target: Any, request: TuneRequest | None, graph_id: str = ""
) -> tuple[Any, dict[str, bytes]]:
    """`tvm.compile` for `target`: an `llvm` target gets `cpu_pipeline` (tuned first when
    `request` asks); other targets keep TVM's default pipeline. Returns the executable and the
    tuning database's files (MetaSchedule's `DB_FILES` and `tuning.json`; none when not
    tuned)."""
    import tvm

    if target.kind.name != "llvm":
        return tvm.compile(mod, target=target), {}
    mod = with_static_batch(mod)
    files: dict[str, bytes] = {}
    if request is not None and request.trials > 0:
        spec = dict(target.export())
        spec.setdefault("num-cores", _physical_cores())
        target = tvm.target.Target({k: v for k, v in spec.items() if k in _TARGET_KEYS})
        files = tune(mod, target, request, graph_id)
    return tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, files)), files


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

    from ...runtime.runners.tvm import STATIC_MAIN

    entries = [gv.name_hint for gv in lowered.get_global_vars()]
    main = relax.transform.DeadCodeElimination([n for n in ("main", STATIC_MAIN) if n in entries])(
        lowered
    )
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
    """Build and time one TIR function in this process: the default schedule and
    MetaSchedule's best, in the same harness, so a tuned schedule is used only where it is
    faster here."""

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


# what TVM's C++ side writes to stderr while tuning that says nothing to a user: the LLVM
# rules name a pooling rule that exists only for other targets (and list, indented, where
# they looked for it)
_NOISE = "Unknown schedule rule"


def _quiet() -> contextlib.AbstractContextManager[None]:
    """MetaSchedule's console log off (its per-task logs go to the work folder, which is
    removed): the logger's level when tuning starts is what its console handler gets. TVM's
    C++ warnings go through file descriptor 2: they are caught, and all but `_NOISE` passed
    on."""
    import logging
    import os
    import sys
    import tempfile

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        logger = logging.getLogger("tvm.s_tir.meta_schedule")
        level = logger.level
        logger.setLevel(logging.ERROR)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                logger.setLevel(level)
                for h in list(logger.handlers):  # the handlers it added for this work folder
                    logger.removeHandler(h)
                    h.close()
                caught.seek(0)
                noise = False
                for line in caught.read().decode(errors="replace").splitlines():
                    noise = _NOISE in line or (noise and line.startswith(" "))
                    if line.strip() and not noise:
                        print(line, file=sys.stderr)

    return ctx()


def _find_previous(
    previous: tuple[tuple[str, dict[str, bytes]], ...], key: str, graph_id: str
) -> dict[str, bytes] | None:
    """The database files of the previous bundle's graph tuned for the same lowered module and
    TVM target, if any, the same graph's first (`previous`: (graph id, its files) per tuned
    graph of that bundle)."""
    for _, files in sorted(previous, key=lambda p: p[0] != graph_id):
        try:
            if json.loads(files.get("tuning.json", b"")).get("key") == key and all(
                n in files for n in DB_FILES
            ):
                return files
        except (ValueError, AttributeError):
            continue
    return None


def tune(mod: Any, target: Any, request: TuneRequest, graph_id: str = "") -> dict[str, bytes]:
    """Tune the per-call TIR functions of `mod` with MetaSchedule for `request.trials` trials in
    all: evolutionary search guided by a cost model (XGBoost when installed, else random),
    candidates built in a process pool here and measured here or, with `request.rpc`, on the
    board behind an RPC tracker. MetaSchedule's gradient task scheduler spreads the trials
    over the functions. A matching database of the previous bundle (same lowered module, same
    TVM target) is the starting point: tuning continues from its records for the trials it
    had not run yet. Returns the bundle's database files (see `DB_FILES`, `tuning.json`)."""
    with target:
        lowered = lower_to_tir(mod)
    with _without_tensor_intrinsics(), _quiet():
        return _tune(lowered, target, request, graph_id)


def _tune(lowered: Any, target: Any, request: TuneRequest, graph_id: str) -> dict[str, bytes]:
    import tempfile
    from pathlib import Path

    key = _key(lowered, target)
    works, dynamic = _workloads(lowered)
    old = _find_previous(request.previous, key, graph_id)
    before = json.loads(old["tuning.json"]) if old else {}
    left = request.trials - int(before.get("trials_total", 0))
    t = time.perf_counter()
    run = 0
    with tempfile.TemporaryDirectory(prefix="hc-tune-") as tmp:
        paths = {n: Path(tmp) / n for n in DB_FILES}
        for n, path in paths.items():
            path.write_bytes(old[n] if old else b"")
        # every function's default schedule, timed here: where the time goes (and on this
        # machine, what a tuned schedule has to beat)
        base = {h: _default_seconds(fmod, target) for h, (_, fmod) in works.items()}
        if left > 0 and works:
            heavy = _where_the_time_goes(base)
            # functions an earlier graph of this build tuned: their records, no new search
            copied = _take_tuned(works, heavy, request.tuned, paths)
            todo = {h: works[h] for h in heavy if h not in copied}
            if todo:
                _search(todo, base, target, request, left, tmp, paths)
                _keep_tuned(todo, request.tuned, paths, graph_id)
        else:
            copied = set()
        functions = _compare(works, base, target, paths, measured_here=request.rpc is None)
        for h in copied:
            functions[h]["from_graph"] = request.tuned[h]["graph"]
        files = {n: path.read_bytes() for n, path in paths.items()}  # as the query left them
        # what MetaSchedule measured here (its task scheduler may measure a few more than asked)
        run = (
            _count_lines(files[DB_FILES[1]])
            - (_count_lines(old[DB_FILES[1]]) if old else 0)
            - sum(len(request.tuned[h]["records"]) for h in copied)
        )
    info = {
        "key": key,
        "search": "MetaSchedule evolutionary",
        "cost_model": _cost_model_name(),
        "measured_on": "this machine" if request.rpc is None else _rpc_text(request.rpc),
        "functions": len(works),
        "dynamic_functions": dynamic,
        "trials": request.trials,
        "trials_run": run,
        "trials_total": int(before.get("trials_total", 0)) + max(run, left if works else 0),
        "measured": _count_lines(files["database_tuning_record.json"]),
        "tuned_functions": sum(1 for f in functions.values() if f["used"]),
        "shared_functions": len(copied),
        "tuning_s": round(time.perf_counter() - t, 3),
        "reused": old is not None,
        "per_function": functions,
    }
    files["tuning.json"] = (json.dumps(info, indent=1) + "\n").encode()
    return files


# MetaSchedule's JSON database: the workloads (TIR functions) and the measured schedules
DB_FILES = ("database_workload.json", "database_tuning_record.json")
BUILD_TIMEOUT_S = 240.0  # one candidate's LLVM build in the builder's pool: slow on 2 cores
RUN_TIMEOUT_S = 60.0


def _count_lines(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip())


def _cost_model_name() -> str:
    import importlib.util

    return "xgb" if importlib.util.find_spec("xgboost") is not None else "random"


def _rpc_text(rpc: tuple[str, int, str]) -> str:
    return f"rpc {rpc[0]}:{rpc[1]} key {rpc[2]}"


HEAVY_SHARE = 0.95  # tune the functions that make up this share of the default time


def _where_the_time_goes(base: dict[str, float]) -> list[str]:
    """The slowest functions (by default-schedule time) that together take HEAVY_SHARE of it:
    trials spent on a reshape or a pooling step of microseconds would be lost."""
    total, acc, out = sum(base.values()) or 1.0, 0.0, []
    for h in sorted(base, key=lambda h: -base[h]):
        out.append(h)
        acc += base[h]
        if acc >= HEAVY_SHARE * total:
            break
    return out


KEEP_RECORDS = 5  # a function's best records handed on to the build's later graphs


def _take_tuned(
    works: dict[str, Any], heavy: list[str], tuned: dict[str, Any], paths: dict[str, Any]
) -> set[str]:
    """Copy into this graph's database the records of the heavy functions an earlier graph of
    the build tuned; returns their hashes."""
    from tvm.s_tir import meta_schedule as ms

    copied = {h for h in heavy if h in tuned}
    if copied:
        db = _database(paths)
        for h in sorted(copied):
            workload = db.commit_workload(works[h][1])
            for trace, secs, target, args in tuned[h]["records"]:
                record = ms.database.TuningRecord(trace, workload, secs, target, args)
                db.commit_tuning_record(record)
    return copied


def _keep_tuned(
    todo: dict[str, Any], tuned: dict[str, Any], paths: dict[str, Any], graph_id: str
) -> None:
    """Remember the best records of the functions just tuned, for the build's later graphs."""
    db = _database(paths)
    for h, (_, fmod) in todo.items():
        if not db.has_workload(fmod):
            continue
        top = db.get_top_k(db.commit_workload(fmod), KEEP_RECORDS)
        tuned[h] = {
            "graph": graph_id,
            "records": [(r.trace, r.run_secs, r.target, r.args_info) for r in top],
        }


def _search(
    works: dict[str, Any],
    base: dict[str, float],
    target: Any,
    request: TuneRequest,
    trials: int,
    work_dir: str,
    paths: dict[str, Any],
) -> None:
    from tvm.s_tir import meta_schedule as ms

    cores = _physical_cores()
    # a small budget gets a small population: sampling 512 candidates costs more than
    # measuring a handful of them
    population = max(32, min(512, 16 * trials))
    tasks = [
        ms.TuneContext(
            mod=fmod,
            target=target,
            # the float32 LLVM rules: the target's own pick would add int8 VNNI rules, whose
            # tensor intrinsics are not loaded (see `_without_tensor_intrinsics`)
            space_generator=ms.space_generator.PostOrderApply(
                sch_rules=ms.ScheduleRule.create("llvm"),
                postprocs=ms.Postproc.create("llvm"),
                mutator_probs=ms.Mutator.create("llvm"),
            ),
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=population, init_min_unmeasured=min(50, population // 2)
            ),
            task_name=name,
            num_threads=cores,
            rand_state=i,
        )
        for i, (_, (name, fmod)) in enumerate(sorted(works.items()))
    ]
    if request.rpc is None:
        runner: Any = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, initializer=_worker_init())
    else:
        host, port, key = request.rpc
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(
                tracker_host=host,
                tracker_port=port,
                tracker_key=key,
                session_timeout_sec=int(RUN_TIMEOUT_S),
            ),
            max_workers=1,
        )
    ms.tune.tune_tasks(
        tasks=tasks,
        # the gradient scheduler spends trials where weight x latency can drop most; every
        # function first gets one round of `per_iter`, so that all of them are measured
        task_weights=[base[h] / min(base[k] for k in works) for h in sorted(works)],
        work_dir=work_dir,
        max_trials_global=trials,
        num_trials_per_iter=max(2, min(16, trials // (2 * len(tasks)))),
        builder=ms.builder.LocalBuilder(
            timeout_sec=BUILD_TIMEOUT_S, max_workers=cores, initializer=_worker_init()
        ),
        runner=runner,
        database=_database(paths),
        cost_model=_cost_model_name(),
    )


def _worker_init() -> Any:
    """The builder's and runner's worker start-up: the placeholder for TVM's tensor
    intrinsics, whose import makes every candidate's build take 20 s instead of milliseconds
    (see `_without_tensor_intrinsics`). A closure, so that it is sent to the worker by value."""

    def init() -> None:
        import sys
        import types

        name = "tvm.s_tir.tensor_intrin"
        sys.modules.setdefault(name, types.ModuleType(name))

    return init


def _database(paths: dict[str, Any]) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(
        path_workload=str(paths["database_workload.json"]),
        path_tuning_record=str(paths["database_tuning_record.json"]),
        module_equality="structural",
    )


def _compare(
    works: dict[str, Any],
    base: dict[str, float],
    target: Any,
    paths: dict[str, Any],
    measured_here: bool,
) -> dict[str, dict[str, Any]]:
    """Per function (by structural hash): its default schedule's time and the best tuned
    schedule's, both measured in this process; the tuned one is `used` only when faster.
    Measured on a board (`measured_here` false), MetaSchedule's own figure decides."""
    db = _database(paths)
    out: dict[str, dict[str, Any]] = {}
    for h, (name, fmod) in sorted(works.items()):
        entry: dict[str, Any] = {"task": name, "default_s": base[h], "tuned_s": None, "used": False}
        known = db.has_workload(fmod)
        sch = db.query_schedule(fmod, target, workload_name="main") if known else None
        if sch is not None:
            if measured_here:
                entry["tuned_s"] = _Measure(target, fmod).seconds(sch.mod)
                entry["used"] = entry["tuned_s"] < entry["default_s"]
            else:
                (rec,) = db.get_top_k(db.commit_workload(fmod), 1)
                secs = [float(x) for x in rec.run_secs]
                entry["tuned_s"] = sum(secs) / len(secs)
                entry["used"] = True
        out[h] = entry
    return out


def apply_database(files: dict[str, bytes], target: Any) -> Any:
    """A module pass that gives every TIR function that tuning found a faster schedule for (by
    structural hash, `tuning.json`'s `per_function`) the schedule MetaSchedule's database
    replays for it, and marks it scheduled, so default schedules leave it alone."""
    import tempfile
    from pathlib import Path

    import tvm
    from tvm import tirx
    from tvm_ffi import structural_hash

    info = json.loads(files["tuning.json"])
    used = {h for h, f in info.get("per_function", {}).items() if f.get("used")}

    @tvm.transform.module_pass(opt_level=0, name="HypercompileApplyTuning")
    def _apply(mod: Any, _ctx: Any) -> Any:
        if not used:
            return mod
        with tempfile.TemporaryDirectory(prefix="hc-tuned-") as tmp:
            paths = {n: Path(tmp) / n for n in DB_FILES}
            for n, path in paths.items():
                path.write_bytes(files[n])
            db = _database(paths)
            updates = {}
            for gv, func in mod.functions_items():
                if not isinstance(func, tirx.PrimFunc) or "tirx.is_scheduled" in func.attrs:
                    continue
                one = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
                if f"{structural_hash(one) & 0xFFFFFFFFFFFFFFFF:016x}" not in used:
                    continue
                sch = db.query_schedule(one, target, workload_name="main")
                if sch is None:
                    continue
                new = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                if "global_symbol" in func.attrs:
                    new = new.with_attr("global_symbol", func.attrs["global_symbol"])
                else:
                    new = new.without_attr("global_symbol")
                updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _apply
