"""The compile half of the back ends (build machine only), one module each, imported only when
asked for. Their run halves are `hypercompile.runtime.runners`."""

from __future__ import annotations

import importlib

from ..errors import BackendError
from .base import Artifact, CompileOptions, Compiler, TuneRequest

_MODULES = {"onnxruntime": ".onnxruntime", "tvm": ".tvm.compile", "tensorrt": ".tensorrt.compile"}
_cache: dict[str, Compiler] = {}


def get_compiler(name: str) -> Compiler:
    if name not in _MODULES:
        raise BackendError(f"unknown back end {name!r} (known: {', '.join(_MODULES)})")
    if name not in _cache:
        module = importlib.import_module(_MODULES[name], __name__)
        _cache[name] = module.COMPILER
    return _cache[name]


def compiler_names() -> list[str]:
    return list(_MODULES)


__all__ = [
    "Artifact",
    "CompileOptions",
    "Compiler",
    "TuneRequest",
    "compiler_names",
    "get_compiler",
]
