"""Profiling a board through Apache TVM's RPC tracker: ask the tracker for a session on a device
key, upload the bundle's TVM libraries, bind each variant's weights as tensors on the board and
time `main` there with the VM's `time_evaluator` (the clock runs on the board, not over the
network). TVM is imported only here, without torch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.manifest import Profile, ProfiledVariant
from ..errors import ProfileError
from ..runtime.fingerprint import backend_versions
from ..runtime.runners import get_runner_factory
from ..runtime.runners.tvm import (
    SHARED_TRANSFORM,
    STATIC_BATCH,
    STATIC_MAIN,
    TRANSFORM_PARAMS,
    import_tvm,
)
from .measure import (
    DEFAULT_REPEAT,
    DEFAULT_WARMUP,
    Flops,
    Progress,
    best_backend,
    folder_inputs,
    profiled_variant,
    random_inputs,
    summarize,
    variant_batch,
    variant_specs,
)

if TYPE_CHECKING:
    from ..runtime.bundle import Bundle


def _last_line(e: BaseException) -> str:
    """TVM's RPC errors end with their cause: the last line, cut to 200 characters."""
    text = str(e).strip()
    return text.splitlines()[-1][:200] if text else type(e).__name__


def connect(address: str, key: str, timeout: float = 60.0) -> Any:
    """A session on a board the tracker at `address` (HOST:PORT) lends for `key`."""
    import_tvm()
    from tvm import rpc

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ProfileError(f"--rpc {address!r} must look like HOST:PORT")
    try:
        tracker = rpc.connect_tracker(host, int(port))
        queues = tracker.summary().get("queue_info", {})
    except Exception as e:  # TVM raises RuntimeError/TVMError/socket errors
        raise ProfileError(
            f"cannot reach the TVM RPC tracker at {address}: {_last_line(e)}"
        ) from None
    if key not in queues:
        known = ", ".join(sorted(queues)) or "none"
        raise ProfileError(
            f"the tracker at {address} has no device with key {key!r} (registered: {known}); on "
            f"the board run `python -m tvm.exec.rpc_server --tracker {address} --key {key}`"
        )
    try:
        return tracker.request(key, priority=1, session_timeout=int(timeout))
    except Exception as e:
        raise ProfileError(
            f"the tracker at {address} lent no {key!r} device: {_last_line(e)}"
        ) from None


def remote_fingerprint(remote: Any, key: str) -> dict[str, Any]:
    """What a plain TVM RPC server can tell about its board: LLVM's view of its CPU and target
    triple, the TVM runtime's thread count, CUDA device names if it has any, and the tracker
    key. A local fingerprint reads /proc instead, so a profile taken over RPC never matches a
    runtime silently; use it by name (`hc.load(path, device=KEY)`, `run --device KEY`)."""

    def ask(name: str) -> Any:
        try:
            return remote.get_function(name)()
        except Exception:
            return None

    triple = ask("target.llvm_get_system_triple")
    arch = str(triple).split("-")[0] if triple else "unknown"
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    fp: dict[str, Any] = {
        "kind": "tvm-rpc",
        "rpc_key": key,
        "arch": arch,
        "cpu": str(ask("target.llvm_get_system_cpu") or "unknown"),
        "triple": str(triple) if triple else None,
        "threads": ask("runtime.NumThreads"),
        "backends": {"tvm": backend_versions().get("tvm", "?")},  # the client's: TVM RPC
        # needs client and server on the same TVM version
    }
    try:
        gpu = remote.cuda(0)
        if gpu.exist:
            fp["gpu"] = [str(gpu.device_name)]
    except Exception:
        pass
    return fp


def _bind_weights(bundle, vm, dev, variant, graph) -> list[Any]:
    """The variant's weights as tensors on the board, in the form `main` takes. A library with
    lifted weight transforms (`main_transform_params` or `transform_params`, TVM CPU builds)
    needs them applied, and TVM RPC cannot hand back the tensors of the list that function
    returns: the transform runs here when this machine can run the library, else profiling
    says so."""
    import tvm

    lifted = any(_has(vm, name) for name in (SHARED_TRANSFORM, TRANSFORM_PARAMS))
    if lifted:
        why_not = get_runner_factory("tvm").runs_here(bundle.target)
        if why_not:
            raise ProfileError(
                f"variant {variant.id}: its TVM library transforms weights at load, which "
                f"cannot run through TVM RPC, and not here either ({why_not})"
            )
        runner = bundle.load_runner(variant, "tvm")  # applies the transform on this machine
        arrays = [w.numpy() for w in runner.weights]
    else:
        weights = bundle.weights(variant)
        arrays = [weights[n] for n in graph.weights]
    return [tvm.runtime.tensor(np.require(a, requirements="C"), device=dev) for a in arrays]


def _has(vm: Any, name: str) -> bool:
    try:
        vm[name]
        return True
    except Exception:  # noqa: BLE001  # no such function in the library
        return False


def _main_for(vm: Any, arrays: list[np.ndarray]) -> str:
    """The function the runtime calls for inputs `arrays`: the batch-specialized copy at its
    batch, where the library has one, else `main`."""
    batch = arrays[0].shape[0] if arrays and arrays[0].ndim else None
    return STATIC_MAIN if batch == STATIC_BATCH and _has(vm, STATIC_MAIN) else "main"


def _check_on_board(tvm, vm, dev, bundle, variant, graph, bound) -> dict[str, float]:
    """Run the bundle's stored PyTorch checks for `variant` on the board before timing it:
    a library that answers wrongly there gets no profile (ProfileError names it)."""
    from ..errors import ParityError

    names = graph.input_names

    class _OnBoard:
        def run(self, feeds):
            args = [
                tvm.runtime.tensor(np.require(feeds[n], requirements="C"), device=dev)
                for n in names
            ]
            out = vm[_main_for(vm, [feeds[n] for n in names])](*args, *bound)
            outs = [out] if hasattr(out, "numpy") else list(out)
            return [o.numpy() for o in outs]

    try:
        return bundle.run_stored_checks(variant, "tvm on the board", _OnBoard())
    except ParityError as e:
        raise ProfileError(str(e)) from None


class _Board:
    """A TVM RPC session on one board: libraries uploaded once, stored checks run once per
    variant before its first timing."""

    def __init__(self, tvm: Any, relax: Any, remote: Any, dev: Any):
        self.tvm, self.relax, self.remote, self.dev = tvm, relax, remote, dev
        self.modules: dict[str, Any] = {}
        self.checked: dict[str, dict[str, float]] = {}

    def time(self, bundle: Bundle, v: Any, arrays: list[np.ndarray], warmup: int, repeat: int):
        """`time_evaluator`'s result for `repeat` runs of variant `v` on `arrays`."""
        tvm, dev = self.tvm, self.dev
        graph = bundle.manifest.graphs[v.graph]
        rel = graph.artifacts["tvm"]
        if rel not in self.modules:
            name = rel.replace("/", "_")
            self.remote.upload(bytearray(bundle.read(rel)), target=name)
            self.modules[rel] = self.remote.load_module(name)
        vm = self.relax.VirtualMachine(self.modules[rel], dev)
        bound = _bind_weights(bundle, vm, dev, v, graph)
        args = [
            tvm.runtime.tensor(np.require(a, requirements="C"), device=dev) for a in arrays
        ] + bound
        if v.checks and v.id not in self.checked:  # built elsewhere: verify here
            self.checked[v.id] = _check_on_board(tvm, vm, dev, bundle, v, graph, bound)
        fn = _main_for(vm, arrays)
        for _ in range(warmup):
            vm[fn](*args)
        return vm.time_evaluator(fn, dev, number=1, repeat=repeat)(*args)


def _open_board(bundle: Bundle, address: str, key: str, timeout: float) -> tuple[_Board, dict]:
    """A session on the board the tracker lends for `key`, and its fingerprint; refused when
    the board is not what the bundle's TVM artifacts were built for."""

    tvm = import_tvm()
    from tvm import relax

    remote = connect(address, key, timeout)
    fp = remote_fingerprint(remote, key)
    if fp["arch"] != bundle.target.arch:
        raise ProfileError(
            f"the board behind key {key!r} is {fp['arch']}; this bundle's TVM artifacts were "
            f"built for {bundle.target.name} ({bundle.target.arch})"
        )
    kind = (bundle.target.tvm_target or {}).get("kind", "llvm")
    dev = remote.cpu(0) if kind in ("llvm", "c") else remote.device(kind, 0)
    return _Board(tvm, relax, remote, dev), fp


def profile_remote(
    bundle: Bundle,
    address: str,
    key: str,
    *,
    backends: list[str] | None = None,
    batches: Sequence[int] | None = None,
    warmup: int = DEFAULT_WARMUP,
    repeat: int = DEFAULT_REPEAT,
    inputs: str | Path | None = None,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Profile:
    """Time every static variant's TVM artifact on the board; returns the profile entry under
    the board's fingerprint. DyNN programs are skipped (their paths are decided on the host)."""
    if backends and any(b not in ("tvm", "auto") for b in backends):
        raise ProfileError("remote profiling times TVM artifacts only (--backend tvm)")
    if warmup < 0 or repeat < 1:
        raise ProfileError("--warmup must be >= 0 and --repeat >= 1")
    manifest = bundle.manifest
    with_tvm = [v for v in manifest.variants if "tvm" in v.artifacts]
    if not with_tvm:
        raise ProfileError(
            "the bundle has no TVM artifacts to upload: build it with --backend tvm for the "
            "board's target"
        )
    board, fp = _open_board(bundle, address, key, timeout)
    wanted = sorted(set(batches or [1]))
    notes: list[str] = []
    jobs = []
    for v in with_tvm:
        if v.program is not None:
            notes.append(f"variant {v.id} skipped: DyNN programs are profiled locally only")
            continue
        specs = variant_specs(bundle, v)
        jobs += [(v, b, specs) for b in sorted({variant_batch(specs, b) for b in wanted})]
    report = progress or (lambda stage, done, total: None)
    flops = Flops(bundle)
    variants: dict[str, ProfiledVariant] = {}
    for i, (v, b, specs) in enumerate(jobs):
        report("profile (rpc)", i, len(jobs))
        feeds = (
            folder_inputs(Path(inputs), specs, b)
            if inputs is not None
            else random_inputs(specs, b, 1)
        )[0]
        try:
            result = board.time(bundle, v, [feeds[s["name"]] for s in specs], warmup, repeat)
        except ProfileError:
            raise
        except Exception as e:
            raise ProfileError(f"variant {v.id} on {key}: {_last_line(e)}") from None
        rec = summarize(list(result.results))
        rec["flops"] = flops.graph(v.graph, b)  # type: ignore[arg-type]
        rec["gflops_per_s"] = (
            round(rec["flops"] / (rec["median_ms"] * 1e-3) / 1e9, 4)
            if rec["flops"] and rec["median_ms"] > 0
            else None
        )
        rec["peak_mem_mb"] = None  # not observable through a plain RPC server
        rec["rss_growth_mb"] = None
        entry = variants.setdefault(v.id, profiled_variant(v))
        entry.results.setdefault("tvm", {})[str(b)] = rec
        if v.id in board.checked:
            entry.device_check = board.checked[v.id]
    report("profile (rpc)", len(jobs), len(jobs))
    for entry in variants.values():
        entry.best_backend = best_backend(entry.results, bundle.target.backends)
    return Profile(
        device=fp,
        source="rpc",
        rpc={"tracker": address, "key": key},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings={
            "warmup": warmup,
            "repeat": repeat,
            "batches": wanted,
            "inputs": str(inputs) if inputs is not None else "random",
            "timer": "tvm time_evaluator (number=1), on the board, one input",
            "auto": False,
        },
        notes=notes,
        variants=variants,
    )
