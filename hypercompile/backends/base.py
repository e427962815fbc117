"""The contract every back end implements: compile at build time, load a runner at run time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    """A ready-to-run artifact for one variant (a graph with its weights bound)."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Binding:
    """What a runner is made of: one verified artifact and the weights it binds."""

    artifact: bytes
    weights: dict[str, np.ndarray]  # in the graph's weight order
    target: Any
    inputs: list[dict[str, Any]]  # the graph's input specs (name, dtype, shape)
    outputs: list[dict[str, Any]]  # the graph's output specs
    shared: bool = False  # one of many runners (a DyNN program's blocks): share threads


class Backend:
    """Base class. Subclasses live in `hypercompile/backends/<name>.py`, import their runtime
    lazily, and must not import torch (the runtime loads them)."""

    name = ""

    def available(self) -> str | None:
        """None when usable here, else a one-line reason."""
        return None

    def compile(self, graph_path: Path, bundle_dir: Path, graph_id: str, target: Any) -> str:
        """Produce this back end's artifact for one ONNX graph; return its bundle-relative path."""
        raise NotImplementedError

    def can_build(self, target: Any) -> str | None:
        """None when this machine has the tools to build for `target`, else what is missing."""
        return None

    def artifact_info(self, path: Path) -> dict[str, Any]:
        """Facts about a compiled artifact for the manifest (machine code, device code)."""
        return {}

    def runs_here(self, target: Any) -> str | None:
        """None when artifacts built for `target` can run on this machine, else why not."""
        return None

    def load(self, binding: Binding) -> Runner:
        """Bind one variant's weights to a compiled artifact and return a runner."""
        raise NotImplementedError
