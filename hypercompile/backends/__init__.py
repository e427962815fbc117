"""Back ends, one module each, imported only when asked for."""

from __future__ import annotations

import importlib

from ..errors import BackendError
from .base import Backend, Runner

_MODULES = {"onnxruntime": "onnxruntime_backend", "tvm": "tvm_backend"}
_cache: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise BackendError(f"unknown back end {name!r} (known: {', '.join(_MODULES)})")
    if name not in _cache:
        module = importlib.import_module(f".{_MODULES[name]}", __name__)
        _cache[name] = module.BACKEND
    return _cache[name]


def backend_names() -> list[str]:
    return list(_MODULES)


__all__ = ["Backend", "Runner", "get_backend", "backend_names"]
