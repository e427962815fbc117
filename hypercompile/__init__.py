"""hypercompile: compile hypernetworks and dynamic neural networks for edge devices.

The build pipeline (`frontend/`, `builder/`; needs torch) materializes one static target per
condition of a HyperModel, splits data-dependent control flow into static blocks and a host
program (`core/ir.py`), exports ONNX graphs and compiles them (`compilers/`) into a bundle that
`core/manifest.py` describes and that is checked against PyTorch through the runtime. The
runtime (`runtime/`, torch-free, with the back ends' run halves in `runtime/runners/`) is all a
device imports: it loads a bundle and runs the variant a condition or a latency budget selects,
interpreting host programs with the same interpreter the build used for its proof, and carrying
the state of models that keep state between calls (`runtime/stream.py`).
Development tools (`devtools/`: profiling here or through TVM RPC, plots) and the CLI sit on
top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendError,
    BudgetError,
    BuildError,
    BundleError,
    ConditionError,
    HypercompileError,
    InputError,
    ModelAssertionError,
    ModelRefError,
    ParityError,
    ProfileError,
    StateError,
    TargetError,
    UnsupportedModelError,
    UnverifiedConditionWarning,
)
from .protocol import HyperModel
from .runtime import Bundle, load
from .version import __version__

if TYPE_CHECKING:
    from pathlib import Path


def build(model: Any, target: Any = None, out: Any = "build/bundle", **kwargs: Any) -> Path:
    """Build a bundle (see `hypercompile.builder.build`); imports torch, unlike `load`."""
    from .builder import build as _build

    return _build(model, target, out, **kwargs)


def profile(path: Any, **kwargs: Any) -> dict[str, Any]:
    """Time every variant of a bundle here and store it (see `hypercompile.api.profile`);
    returns what `hypercompile profile --json` prints."""
    from .api import profile as _profile

    return _profile(path, **kwargs)


def inspect(path: Any) -> dict[str, Any]:
    """A bundle's description as data: what `hypercompile inspect --json` prints."""
    from .api import inspect as _inspect

    return _inspect(path)


__all__ = [
    "__version__",
    "build",
    "load",
    "profile",
    "inspect",
    "Bundle",
    "HyperModel",
    "HypercompileError",
    "BackendError",
    "BudgetError",
    "BuildError",
    "BundleError",
    "ConditionError",
    "InputError",
    "ModelAssertionError",
    "ModelRefError",
    "ParityError",
    "ProfileError",
    "StateError",
    "TargetError",
    "UnsupportedModelError",
    "UnverifiedConditionWarning",
]
