"""The contract every back end implements: compile at build time, load a runner at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    """A ready-to-run artifact for one variant (a graph with its weights bound)."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


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

    def load(
        self,
        artifact: bytes,
        weights: dict[str, np.ndarray],
        target: Any,
        output_names: list[str],
        shared: bool = False,
        input_names: list[str] | None = None,
        output_specs: list[dict[str, Any]] | None = None,
    ) -> Runner:
        """Bind one variant's weights to a compiled artifact and return a runner. `shared`:
        the runner is one of many (a DyNN program's blocks) that should share threads."""
        raise NotImplementedError
