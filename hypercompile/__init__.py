"""hypercompile: compile hypernetworks and dynamic neural networks for edge devices.

The front end (`frontend/`) materializes one static target network per condition of a
HyperModel and exports one ONNX graph per distinct architecture; back ends compile those graphs
(`compilers/`, build machine only); `build` writes everything into a bundle checked against
PyTorch. The runtime (`runtime/`, torch-free, with the back ends' run halves in
`runtime/runners/`) loads a bundle and runs the variant a condition, or a latency budget checked
against the profile taken on this device, selects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BackendError,
    BudgetError,
    BuildError,
    BundleError,
    ConditionError,
    HypercompileError,
    InputError,
    ModelRefError,
    ParityError,
    ProfileError,
    TargetError,
    UnsupportedModelError,
)
from .protocol import HyperModel  # noqa: E402
from .runtime import Bundle, load  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path


def build(model: Any, target: Any = None, out: Any = "build/bundle", **kwargs: Any) -> Path:
    """Build a bundle (see `hypercompile.builder.build`); imports torch, unlike `load`."""
    from .builder import build as _build

    return _build(model, target, out, **kwargs)


__all__ = [
    "build",
    "load",
    "Bundle",
    "HyperModel",
    "HypercompileError",
    "BackendError",
    "BudgetError",
    "BuildError",
    "BundleError",
    "ConditionError",
    "InputError",
    "ModelRefError",
    "ParityError",
    "ProfileError",
    "TargetError",
    "UnsupportedModelError",
]
