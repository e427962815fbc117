"""Block exports in worker processes. A build forks workers that inherit the program, the model
and a warm exporter (nothing is pickled), each exporting its share of the blocks in batches
(`program.export_blocks`) and sending back what the manifest records. A worker that dies (the
exporter crashed in native code) fails the build with the file and line of the block it was
exporting; the build then removes its temporary folder as for any error. Elsewhere than on
Linux (where forking a process that runs torch is not safe), blocks are exported in the build's
own process."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from ..core import ir
from ..errors import BuildError

MAX_WORKERS = 4
BATCH = 16  # blocks per exporter call: its fixed cost is paid once per batch
STALL_S = 900  # a worker silent this long is stuck, not busy
MIN_SHARE = 6  # fewer blocks than this per worker: fewer workers


def export_in_workers(
    prog: Any, blocks: list[ir.Block], root: torch.nn.Module, paths: dict[int, Path]
) -> dict[int, Any]:
    """Export `blocks` of `prog` to `paths` (by block id); returns `export_blocks`'s records."""
    from ..frontend.program import export_blocks

    if not blocks:
        return {}
    if not sys.platform.startswith("linux"):  # forking a process that runs torch: Linux only
        return export_blocks(prog, blocks, root, paths)
    _warm_up()
    n = max(1, min(_cpus(), MAX_WORKERS, len(blocks) // MIN_SHARE))
    pool = _Pool(prog, root, paths)
    try:
        for i in range(n):
            pool.start(blocks[i::n], BATCH)
        return pool.collect()
    finally:
        pool.stop()


class _Pool:
    """Forked workers and what they have reported."""

    def __init__(self, prog: Any, root: torch.nn.Module, paths: dict[int, Path]):
        self.prog, self.root, self.paths = prog, root, paths
        self.results: dict[int, Any] = {}
        # read end -> [pid, blocks not done yet, blocks of the exporter call in flight]
        self.workers: dict[Any, list[Any]] = {}

    def start(self, blocks: list[ir.Block], batch: int) -> None:
        import multiprocessing as mp

        reader, writer = mp.Pipe(duplex=False)
        # The worker must never free what it inherits: an ONNX Runtime session or tensor the
        # parent holds waits, in its destructor, for threads that do not exist in the child
        # (a hang). Frozen objects are left alone by the child's garbage collector.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            reader.close()
            _work(writer, self.prog, blocks, self.root, self.paths, batch)
        gc.unfreeze()
        writer.close()
        self.workers[reader] = [pid, {b.id: b for b in blocks}, []]

    def collect(self) -> dict[int, Any]:
        from multiprocessing.connection import wait

        while self.workers:
            ready = wait(list(self.workers), timeout=STALL_S)
            if not ready:  # stopped in the exporter: a hang, not work (`stop` ends them)
                state = next(iter(self.workers.values()))
                b = next(iter(state[1].values()))
                raise BuildError(
                    f"{self.prog.filename}:{getattr(b.body[0], 'lineno', '?')}: exporting this "
                    f"block made no progress in {STALL_S} s; no graph was built"
                )
            for conn in ready:
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    kind, payload = "ended", None
                if kind == "ended":
                    self._ended(conn)
                    continue
                state = self.workers[conn]
                if kind == "start":
                    state[2] = payload
                elif kind == "done":
                    self.results.update(payload)
                    for k in payload:
                        state[1].pop(k, None)
                else:
                    raise pickle.loads(payload)
        return self.results

    def _ended(self, conn: Any) -> None:
        """A worker closed its pipe: it finished, or it died with blocks left to export."""
        pid, pending, in_flight = self.workers.pop(conn)
        conn.close()
        _, status = os.waitpid(pid, 0)
        if not pending:
            return
        if len(in_flight) > 1:  # which block of the batch? each alone, in a new worker
            self.start(list(pending.values()), 1)
            return
        b = pending.get(in_flight[0]) if in_flight else next(iter(pending.values()))
        raise BuildError(
            f"{self.prog.filename}:{getattr(b.body[0], 'lineno', '?')}: exporting this block "
            f"crashed the exporter ({_how(status)}); no graph was built"
        )

    def stop(self) -> None:
        """End the workers still running (after an error) and reap them."""
        for conn, (pid, _, _) in self.workers.items():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            conn.close()
        self.workers.clear()


def _work(conn: Any, prog: Any, blocks: list[ir.Block], root, paths, batch: int) -> None:
    """A worker's life: export the blocks in batches, report, exit without returning (so that
    nothing of the parent's - atexit handlers, a test runner - runs twice)."""
    try:
        import faulthandler

        faulthandler.disable()  # a crash is the parent's to report
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        torch.set_num_threads(1)
        from ..frontend.program import export_blocks

        for i in range(0, len(blocks), batch):
            part = blocks[i : i + batch]
            result = export_blocks(
                prog, part, root, paths, started=lambda ks: conn.send(("start", ks))
            )
            conn.send(("done", result))
    except BaseException as e:  # noqa: BLE001 - every error goes to the parent
        try:
            conn.send(("error", pickle.dumps(e)))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", pickle.dumps(BuildError(f"{type(e).__name__}: {e}"))))
    finally:
        os._exit(0)


def _warm_up() -> None:
    """Warm the exporter in this process once, so that every worker forked from it starts
    warm: its translation table, and the first-export costs of torch.export."""
    global _WARM
    if _WARM:
        return
    from ..frontend.export import OPSET, quiet, warm_exporter

    _WARM = True
    warm_exporter()
    with contextlib.suppress(Exception), quiet():
        torch.onnx.export(
            torch.nn.Linear(2, 2),
            (torch.zeros(1, 2),),
            dynamo=True,
            optimize=False,
            opset_version=OPSET,
        )


_WARM = False


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
