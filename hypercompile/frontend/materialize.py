"""Materialization: condition -> a static target network with the hypernet's weights baked in."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ..core.conditions import show
from ..errors import BuildError


def cond_label(cond: dict[str, Any]) -> str:
    return ", ".join(f"{k}={show(v)}" for k, v in cond.items()) or "(single variant)"


def materialize(model: Any, cond: dict[str, Any]) -> torch.nn.Module:
    """build(cond), load generate(cond) strictly, eval. Errors name the variant and tensors."""
    label = cond_label(cond)
    target = model.build(cond)
    if not isinstance(target, torch.nn.Module):
        raise BuildError(
            f"variant {label}: build() returned {type(target).__name__}, not an nn.Module"
        )
    # with autograd: a graph hypernet may differentiate while it generates (ppuda's GHN)
    with torch.enable_grad():
        weights = model.generate(cond)
    if not isinstance(weights, dict):
        raise BuildError(f"variant {label}: generate() must return a dict name -> tensor")
    weights = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
    expected = target.state_dict()
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
        raise BuildError(
            f"variant {label}: generated weights do not fit the target: {'; '.join(parts)}"
        )
    for k, v in expected.items():
        w = weights[k]
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != tuple(v.shape):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise BuildError(
                f"variant {label}: tensor {k} has shape {got}, target wants {tuple(v.shape)}"
            )
    target.load_state_dict(weights, strict=True)
    return target.eval()


_PLAIN = (int, float, str, bool, type(None))


def _plain_attrs(module: torch.nn.Module) -> dict[str, Any]:
    out = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _PLAIN) or (
            isinstance(v, (tuple, list)) and all(isinstance(x, _PLAIN) for x in v)
        ):
            out[k] = v if not isinstance(v, float) else repr(v)
    return out


def architecture_signature(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> str:
    """Equal for targets that compile to the same graph: module tree, hyperparameters, tensor
    names/shapes/dtypes and input shapes; independent of weight values."""
    desc = {
        "modules": [
            [name, f"{type(m).__module__}.{type(m).__qualname__}", m.extra_repr(), _plain_attrs(m)]
            for name, m in module.named_modules()
        ],
        "tensors": [[k, list(v.shape), str(v.dtype)] for k, v in module.state_dict().items()],
        "inputs": [[list(x.shape), str(x.dtype)] for x in inputs],
    }
    return hashlib.sha256(json.dumps(desc, default=str).encode()).hexdigest()[:16]


def flatten_outputs(out: Any) -> tuple[list[str], list[torch.Tensor]]:
    """Output names and tensors, in the order the ONNX exporter flattens them."""
    if isinstance(out, torch.Tensor):
        return ["output"], [out]
    if isinstance(out, dict):
        names, tensors = [], []
        for k, v in out.items():
            sub_names, sub = flatten_outputs(v)
            names += [str(k) if n == "output" else f"{k}_{n}" for n in sub_names]
            tensors += sub
        return names, tensors
    if isinstance(out, (tuple, list)):
        tensors = []
        for v in out:
            tensors += flatten_outputs(v)[1]
        return [f"output_{i}" for i in range(len(tensors))], tensors
    raise BuildError(f"model output of type {type(out).__name__} is not a tensor, tuple or dict")
