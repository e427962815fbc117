"""The inputs a build checks a variant on, and the refusal of checks that prove nothing.

Parity inputs are the example, then the user's own data (`--parity-data DIR`, one NAME.npy per
input whose first axis stacks samples), or the model's `sample_inputs(cond, n)`, or random
inputs shaped like the example: floats from a normal distribution unless the example holds few
distinct values (an adjacency matrix, a mask), in which case they are drawn from those values;
integers and booleans from the example's values."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BuildError, InputError

_FEW_VALUES = 16


@dataclass(frozen=True)
class ParityOptions:
    """How a build checks its variants: random inputs per variant (None: the default for its
    kind), a folder of real inputs, and whether checks that prove nothing may pass."""

    n_random: int | None = None
    data: Path | None = None
    allow_untested: bool = False


def random_like(x: torch.Tensor, gen: torch.Generator, batch: int | None = None) -> torch.Tensor:
    """A fresh random input of x's dtype and shape (batch replaced when given)."""
    shape = list(x.shape)
    if batch is not None and shape:
        shape[0] = batch
    values = torch.unique(x) if x.numel() else x.reshape(-1)
    if x.dtype == torch.bool or (x.numel() > _FEW_VALUES and len(values) <= _FEW_VALUES):
        if len(values) < 2 and x.dtype == torch.bool:
            values = torch.tensor([False, True])
        if len(values) >= 2:
            idx = torch.randint(0, len(values), shape, generator=gen)
            return values[idx].to(x.dtype)
    if x.dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=x.dtype)
    lo, hi = (int(x.min()), int(x.max())) if x.numel() else (0, 1)
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=x.dtype)


def parity_sets(
    hm: Any,
    cond: dict[str, Any],
    inputs: tuple[torch.Tensor, ...],
    names: list[str],
    gen: torch.Generator,
    n: int,
    data: Path | None,
) -> list[tuple[torch.Tensor, ...]]:
    """The example first, then `data`'s samples, or `hm.sample_inputs(cond, n)`, or `n` random
    input tuples."""
    sets = [inputs]
    if data is not None:
        return sets + folder_sets(data, names, inputs)
    sample = getattr(hm, "sample_inputs", None)
    if callable(sample):
        given = [tuple(s) if not isinstance(s, torch.Tensor) else (s,) for s in sample(cond, n)]
        for i, xs in enumerate(given):
            if len(xs) != len(inputs) or not all(isinstance(x, torch.Tensor) for x in xs):
                raise BuildError(
                    f"sample_inputs() item {i} is not a tuple of {len(inputs)} tensors"
                )
        return sets + given
    return sets + [tuple(random_like(x, gen) for x in inputs) for _ in range(n)]


def folder_sets(
    folder: Path, names: list[str], inputs: tuple[torch.Tensor, ...]
) -> list[tuple[torch.Tensor, ...]]:
    """`folder/NAME.npy` per input, first axis stacking samples, cut into chunks of the
    example's batch (its first dimension)."""
    arrays = []
    for name, x in zip(names, inputs):
        path = Path(folder) / f"{name}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"--parity-data: cannot read {path}: {e}") from None
        want = str(x.numpy().dtype) if x.dtype != torch.bfloat16 else "bfloat16"
        if (
            arr.dtype.name != want
            or arr.ndim != x.dim()
            or tuple(arr.shape[1:]) != tuple(x.shape[1:])
        ):
            raise InputError(
                f"--parity-data: {path.name} is {arr.dtype.name}{list(arr.shape)}, the input "
                f"{name} is {want}{list(x.shape)} (first axis: samples)"
            )
        arrays.append(arr)
    rows = int(inputs[0].shape[0]) if inputs[0].dim() else 1
    count = min(a.shape[0] for a in arrays) // max(rows, 1)
    if count < 1:
        raise InputError(f"--parity-data: need at least {rows} sample(s) per file in {folder}")
    return [
        tuple(torch.from_numpy(np.ascontiguousarray(a[i * rows : (i + 1) * rows])) for a in arrays)
        for i in range(count)
    ]


def constant_outputs(names: list[str], expected: list[list[np.ndarray]]) -> list[str]:
    """Outputs whose value is the same for every parity input (a check that cannot fail):
    all NaN, or equal across inputs of one shape."""
    bad = []
    for k, name in enumerate(names):
        outs = [case[k] for case in expected if k < len(case)]
        if outs and all(o.dtype.kind == "f" and o.size and np.isnan(o).all() for o in outs):
            bad.append(f"output {name} is NaN everywhere")
            continue
        first = outs[0] if outs else None
        same = [o for o in outs if first is not None and o.shape == first.shape]
        if len(same) > 1 and all(np.array_equal(first, o, equal_nan=True) for o in same[1:]):
            bad.append(f"output {name} is the same for all {len(same)} parity inputs")
    return bad


def source_of(module: torch.nn.Module) -> str:
    """`file:line` of a module's forward, for messages about the whole model."""
    fn = type(module).forward
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return type(module).__qualname__


def untested_message(what: list[str]) -> str:
    return (
        f"the parity check cannot fail: {'; '.join(what[:3])}"
        + (f" (and {len(what) - 3} more)" if len(what) > 3 else "")
        + ". Give inputs that exercise the model (--parity-data DIR, or a sample_inputs(cond, n) "
        "method), or pass --allow-untested to build anyway (recorded in the bundle)"
    )
