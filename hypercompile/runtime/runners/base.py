"""The run half of a back end, on the device: bind a variant's weights to a verified artifact and
run it. Torch-free; never imports onnx, the compilers or the builder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

OrtPool = Literal["shared", "per-session"]
ORT_POOLS = ("shared", "per-session")


class Runner(Protocol):
    """A ready-to-run artifact for one variant (a graph with its weights bound)."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Binding:
    """What a runner is made of: one verified artifact and the weights it binds, and how the
    bundle wants it run."""

    artifact: bytes
    weights: dict[str, np.ndarray]  # in the graph's weight order
    target: Any
    inputs: list[dict[str, Any]]  # the graph's input specs (name, dtype, shape)
    outputs: list[dict[str, Any]]  # the graph's output specs
    in_program: bool = False  # one of a DyNN program's block runners (many, one runs at a time)
    # ONNX Runtime's intra-op threads, as the bundle chose them (see `hc.load`): "shared", the
    # process-wide pool, or "per-session", a pool of the session's own
    ort_pool: OrtPool = "per-session"


class RunnerFactory:
    """Base class. Subclasses live in `hypercompile/runtime/runners/<name>.py`, import their
    runtime lazily, and must not import torch, onnx or the compilers."""

    name = ""

    def available(self) -> str | None:
        """None when this back end's runtime is installed here, else a one-line reason."""
        return None

    def runs_here(self, target: Any) -> str | None:
        """None when artifacts built for `target` can run on this machine, else why not."""
        return None

    def load(self, binding: Binding) -> Runner:
        """Bind one variant's weights to a compiled artifact and return a runner."""
        raise NotImplementedError
