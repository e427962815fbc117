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

from ..errors import BuildError, ModelRefError
from ..protocol import StaticModel, is_hypermodel
from .clone import clone_module


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


def forward_inputs(module: torch.nn.Module, given: dict[str, Any], what: str) -> tuple:
    """Named inputs in the order of `module.forward`'s positional parameters; an unknown name,
    or a parameter without default left out before the last given one or after it, is a
    BuildError naming it."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        raise BuildError(
            f"{what}: cannot read the parameters of forward to place named inputs"
        ) from None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds]
    names = [p.name for p in positional]
    takes = f"{type(module).__name__}.forward({', '.join(names)})"
    unknown = [n for n in given if n not in names]
    if unknown:
        raise BuildError(f"{what}: {takes} has no input {unknown[0]!r}")
    last = max((names.index(n) for n in given), default=-1)
    missing = [p.name for i, p in enumerate(positional) if p.name not in given and i < last]
    missing += [p.name for p in positional[last + 1 :] if p.default is inspect.Parameter.empty]
    if missing:
        raise BuildError(f"{what}: no input named {missing[0]!r} for {takes}")
    return tuple(given[n] for n in names[: last + 1])


def example_tuple(value: Any, module: torch.nn.Module, what: str) -> tuple[torch.Tensor, ...]:
    """Example inputs as forward takes them: a tensor, a tuple or list of tensors, or a dict
    name -> tensor (ordered by forward's parameters). BuildError for anything else."""
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, dict):
        value = forward_inputs(module, value, what)
    elif not isinstance(value, (tuple, list)):
        raise BuildError(
            f"{what}: example inputs must be a tensor, a tuple of tensors or a dict name -> "
            f"tensor, not a {type(value).__name__}"
        )
    bad = [type(x).__name__ for x in value if not isinstance(x, torch.Tensor)]
    if bad:
        raise BuildError(f"{what}: example inputs must be tensors, not {bad[0]}")
    return tuple(value)


def random_inputs(specs: dict[str, tuple[list[int], str]]) -> dict[str, torch.Tensor]:
    """Example inputs from shapes and dtype names (`build --input`): floats normal, integers
    and booleans 0 or 1, from a fixed seed."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, (shape, dtype) in specs.items():
        dt = getattr(torch, dtype)
        if dt.is_floating_point:
            out[name] = torch.randn(shape, generator=gen).to(dt)
        else:
            out[name] = torch.randint(0, 2, shape, generator=gen).to(dt)
    return out


def module_example_inputs(module: torch.nn.Module) -> Any:
    """A plain module's own example inputs (its `example_inputs` attribute, called when it is a
    method), or None."""
    ex = getattr(module, "example_inputs", None)
    return ex() if callable(ex) else ex


def _try_forward(model: StaticModel, label: str) -> None:
    """One forward on inputs given from outside, so that a wrong shape or dtype is one line
    naming them rather than a traceback from deep inside the build."""
    inputs = model.example_inputs({})
    try:
        with torch.no_grad():
            clone_module(model.module)(*inputs)
    except AssertionError:
        return  # forward's own assert: the build names its line (or makes it a host check)
    except Exception as e:
        shapes = ", ".join("x".join(map(str, x.shape)) + f" {str(x.dtype)[6:]}" for x in inputs)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelRefError(
            f"{label}: forward fails on the given example inputs ({shapes}): "
            f"{type(e).__name__}: {first}"
        ) from None


def resolve_model(model: Any, example_inputs: Any = None) -> Any:
    """A HyperModel for `model`: a reference, a HyperModel, an nn.Module, or a factory of one.
    `example_inputs` (a tensor, a tuple of tensors, or a dict name -> tensor) are for a plain
    module, and win over its own."""
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
        if example_inputs is not None:
            raise ModelRefError(
                f"{label} is a HyperModel: its example_inputs(cond) give the inputs, not "
                "example inputs from the command line or build(..., example_inputs=...)"
            )
        return obj
    if isinstance(obj, torch.nn.Module):
        given = example_inputs if example_inputs is not None else module_example_inputs(obj)
        inputs = example_tuple(given, obj, label) if given is not None else ()
        if not inputs:
            raise ModelRefError(
                f"{label}: a plain nn.Module needs example inputs (an `example_inputs` "
                "attribute or method, build(..., example_inputs=...), or build --input "
                "NAME=1x3x32x32 on the command line)"
            )
        model = StaticModel(obj, inputs)
        if example_inputs is not None:
            _try_forward(model, label)
        return model
    raise ModelRefError(
        f"{label} is a {type(obj).__name__}, not a HyperModel, an nn.Module, or a factory of one"
    )
