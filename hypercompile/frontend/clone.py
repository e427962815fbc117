"""Private copies of a user's module: the build calls copies, never the module itself, so what a
call leaves behind (state, scratch attributes) reaches neither the user nor the export."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch

from ..errors import UnsupportedModelError

M = TypeVar("M", bound=torch.nn.Module)


def clone_module(module: M) -> M:
    """A deep copy of `module`; a module deepcopy cannot copy is refused in one line."""
    try:
        return copy.deepcopy(module)
    except Exception as e:  # noqa: BLE001  # deepcopy raises whatever the object's pickling does
        raise UnsupportedModelError(
            f"{type(module).__name__}: the build works on private copies of the model, and "
            f"copy.deepcopy fails on it ({type(e).__name__}: {e})"
        ) from None
