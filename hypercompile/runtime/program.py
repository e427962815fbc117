"""Runs a dynamic network's host program on the device: the IR's one interpreter, each block's
graph a compiled runner. Torch-free; the program is data from the manifest.

On a GPU, block outputs stay on the device between blocks: when every block runner can keep
its results there (`Runner.resident`: ONNX Runtime with a GPU provider through I/O binding, TVM
on CUDA), blocks exchange device values and the host copies back only what it reads itself:
decision scalars, checked values, lists it joins, and the program's outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..core import ir
from ..errors import BundleError
from .runners import Runner


class ProgramRunner(ir.Interpreter):
    """A Runner for a whole program: `run(feeds)` returns the program's outputs; `run(feeds,
    observer)` also reports every block and decision (coverage, path traces)."""

    def __init__(
        self,
        program: ir.Program,
        graph_inputs: dict[str, list[str]],
        runners: dict[str, Runner],
        resident: bool | None = None,
    ):
        """`resident`: keep block outputs where the runners compute them (default: when every
        runner computes on a device other than the host's memory)."""
        self.graph_inputs, self.runners = graph_inputs, runners
        self._literal = ir.ArrayLiterals()
        if resident is None:
            resident = bool(runners) and all(
                getattr(r, "resident", False) for r in runners.values()
            )
        self.resident = resident
        if resident:
            to_host = {type(r).host for r in runners.values()}
            if len(to_host) != 1:
                raise BundleError("a program's blocks run on one back end")
            self.host = to_host.pop()
        super().__init__(program)

    def bind(self, block: ir.Block) -> Callable[[dict[str, Any]], None] | None:
        if block.graph is None:
            return None
        runner = self.runners.get(block.graph)
        names = self.graph_inputs.get(block.graph)
        if runner is None or names is None:
            raise BundleError(f"program block {block.id} calls a missing graph {block.graph}")
        if len(names) != len(block.inputs):
            raise BundleError(f"program block {block.id}: inputs do not match its graph")
        feeds = list(zip(names, block.inputs))
        outputs = block.outputs
        run = runner.run_resident if self.resident else runner.run  # type: ignore[attr-defined]

        def call(env: dict[str, Any]) -> None:
            for n, v in zip(outputs, run({g: env[n] for g, n in feeds})):
                env[n] = v

        return call

    def literal(self, lit: ir.Literal) -> np.ndarray:
        return self._literal(lit)

    def run(  # type: ignore[override]
        self, feeds: dict[str, np.ndarray], observer: ir.Observer | None = None
    ) -> list[np.ndarray]:
        """The program's outputs, host lists flattened in order (as `forward`'s are)."""
        out: list[np.ndarray] = []
        for v in super().run(dict(feeds), observer=observer):
            _flatten(v, out)
        if self.host is not None:
            return [self.host(v) for v in out]
        return out


def _flatten(v: Any, out: list[Any]) -> None:
    if type(v) is list:
        for x in v:
            _flatten(x, out)
    else:
        out.append(v)
