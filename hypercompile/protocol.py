"""The HyperModel protocol: what the front end asks of a model (see the README)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class HyperModel(Protocol):
    """A family of static target networks, one per condition, whose weights a hypernet makes.

    - `conditions()`: dicts of str -> JSON value, e.g. `{"task": 3}` or
      `{"ks": [3, 5, 7], "d": [2, 3]}`; matched by canonical JSON (see core/conditions.py).
    - `build(cond)`: the target architecture for `cond`, an `nn.Module`.
    - `generate(cond)`: the full state_dict for `build(cond)` (the hypernet's output); called
      with autograd enabled, its tensors detached afterwards.
    - `example_inputs(cond)`: a tensor or tuple of tensors with the deployed shapes (batch 1).
    - `reference(cond, *inputs)` (optional): the hypernet + target path, for parity.
    - `quality(cond)` (optional): a score, higher is better, used by budget selection.
    - `selectable()` (optional): the condition keys a latency budget may choose, those that
      pick a version of one model (width, depth, stitch, exit configuration); every other key
      (a task) must be given with a budget. Default: none.
    """

    def conditions(self) -> Iterable[dict[str, Any]]: ...

    def build(self, cond: dict[str, Any]) -> torch.nn.Module: ...

    def generate(self, cond: dict[str, Any]) -> dict[str, torch.Tensor]: ...

    def example_inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]: ...


PROTOCOL_METHODS = ("conditions", "build", "generate", "example_inputs")


def is_hypermodel(obj: Any) -> bool:
    """Duck-typed check: an instance with the four protocol methods."""
    return not isinstance(obj, type) and all(
        callable(getattr(obj, m, None)) for m in PROTOCOL_METHODS
    )


class StaticModel:
    """Wraps a plain `nn.Module` as a one-variant HyperModel (condition `{}`). The build works
    on a copy, taken now: the user's module is never changed (not even put in eval mode), and
    nothing a later call leaves in it reaches the bundle."""

    def __init__(self, module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]):
        from .frontend.clone import clone_module

        self.module = clone_module(module).eval()
        self._inputs = tuple(example_inputs)
        sample = getattr(module, "sample_inputs", None)
        if callable(sample):  # the module's own parity inputs: sample_inputs(cond, n)
            self.sample_inputs = sample

    def conditions(self) -> list[dict[str, Any]]:
        return [{}]

    def build(self, cond: dict[str, Any]) -> torch.nn.Module:
        from .frontend.clone import clone_module

        return clone_module(self.module)

    def generate(self, cond: dict[str, Any]) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def example_inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return self._inputs
