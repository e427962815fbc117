"""The run half of the back ends (torch-free, on the device), one module each, imported only when
asked for. Their compile halves are `hypercompile.compilers`, which this package never imports."""

from __future__ import annotations

import importlib

from ...errors import BackendError
from .base import ORT_POOLS, Binding, OrtPool, Runner, RunnerFactory, SharedTensors

_MODULES = {"onnxruntime": ".onnxruntime", "tvm": ".tvm", "tensorrt": ".tensorrt"}
_cache: dict[str, RunnerFactory] = {}


def get_runner_factory(name: str) -> RunnerFactory:
    if name not in _MODULES:
        raise BackendError(f"unknown back end {name!r} (known: {', '.join(_MODULES)})")
    if name not in _cache:
        module = importlib.import_module(_MODULES[name], __name__)
        _cache[name] = module.FACTORY
    return _cache[name]


def runner_names() -> list[str]:
    return list(_MODULES)


__all__ = [
    "ORT_POOLS",
    "Binding",
    "OrtPool",
    "Runner",
    "RunnerFactory",
    "SharedTensors",
    "get_runner_factory",
    "runner_names",
]
