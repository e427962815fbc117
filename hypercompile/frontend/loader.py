"""Resolve a model reference (`path/file.py:NAME`, `package.module:NAME`) into a HyperModel."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelRefError
from ..protocol import StaticModel, is_hypermodel


def import_ref(ref: str) -> Any:
    """The object a reference names; the file form imports the file as a fresh module."""
    if ":" not in ref:
        raise ModelRefError(
            f"model reference {ref!r} must look like path/file.py:NAME or module:NAME"
        )
    where, name = ref.rsplit(":", 1)
    if not name:
        raise ModelRefError(f"model reference {ref!r} names no object after ':'")
    if where.endswith(".py") or Path(where).is_file():
        path = Path(where).resolve()
        if not path.is_file():
            raise ModelRefError(f"model file {where} does not exist")
        mod_name = f"_hc_model_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ModelRefError(f"cannot import {where}")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # let the file import its siblings
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise ModelRefError(f"importing {where} failed: {type(e).__name__}: {e}") from e
        finally:
            sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ModelRefError(f"cannot import module {where!r}: {e}") from None
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ModelRefError(f"{where} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


def module_example_inputs(module: torch.nn.Module) -> tuple[torch.Tensor, ...] | None:
    ex = getattr(module, "example_inputs", None)
    if ex is None:
        return None
    if callable(ex):
        ex = ex()
    return (ex,) if isinstance(ex, torch.Tensor) else tuple(ex)


def resolve_model(model: Any, example_inputs: tuple[torch.Tensor, ...] | None = None) -> Any:
    """A HyperModel for `model`: a reference, a HyperModel, an nn.Module, or a factory of one."""
    label = model if isinstance(model, str) else type(model).__name__
    obj = import_ref(model) if isinstance(model, str) else model
    if not is_hypermodel(obj) and not isinstance(obj, torch.nn.Module) and callable(obj):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise ModelRefError(f"{label}: a factory must take no arguments") from None
        except ValueError:
            pass  # builtins without a signature: just call
        obj = obj()
    if is_hypermodel(obj):
        return obj
    if isinstance(obj, torch.nn.Module):
        inputs = example_inputs or module_example_inputs(obj)
        if not inputs:
            raise ModelRefError(
                f"{label}: a plain nn.Module needs example inputs "
                "(an `example_inputs` attribute or method, or build(..., example_inputs=...))"
            )
        return StaticModel(obj, inputs)
    raise ModelRefError(
        f"{label} is a {type(obj).__name__}, not a HyperModel, an nn.Module, or a factory of one"
    )
