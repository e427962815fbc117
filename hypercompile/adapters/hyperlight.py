"""Adapter for hyperlight (PyPI `hyperlight`): a `HyperNet` that maps hyperparameters `h` to the
external parameters of a `hypernetize`d main network.

Two ways to compile one: `HyperlightModel` is a HyperModel with one variant per point of a grid
of hyperparameter values (the hypernet runs at build time, each variant gets its own weights);
`HyperlightModel.fused()` is the whole model, hypernet and main net, as one plain module whose
graph takes `h` as an input, so any `h` can be asked for at run time. `generator()` is the
hypernet alone (hyperparameters -> main-net weights), so a bundle can store it instead of every
grid point's weights (`build --storage generate`) and run a value between grid points
(`b.run(..., h=0.3, allow_unlisted=True)`).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import BuildError


def _hyperlight():
    try:
        import hyperlight
    except ImportError as e:
        raise BuildError("the hyperlight adapter needs `pip install hyperlight`") from e
    return hyperlight


class HyperlightModel:
    """HyperModel over a hyperlight `HyperNet` and the main net it drives, one condition per
    point of `grid` (`{"h": [0.0, 0.5, 1.0]}` -> `{"h": 0.0}`, ...; several hyperparameters
    give their product). Every hyperparameter must be a scalar (`input_shapes` of `(1,)`).
    `input_shape` is the main net's input with batch 1."""

    def __init__(
        self,
        hypernet: nn.Module,
        mainnet: nn.Module,
        grid: Mapping[str, Iterable[float]],
        *,
        input_shape: tuple[int, ...],
    ):
        hl = _hyperlight()
        if not isinstance(hypernet, hl.HyperNet):
            raise BuildError(f"hyperlight: expected a HyperNet, got {type(hypernet).__name__}")
        if not isinstance(mainnet, hl.HyperModule):
            raise BuildError("hyperlight: the main net must be hypernetize()d (a HyperModule)")
        self.hypernet, self.mainnet = hypernet.eval(), mainnet.eval()
        wanted = {k: tuple(v) for k, v in mainnet.external_shapes().items()}
        made = {k: tuple(v) for k, v in hypernet.output_shapes.items()}
        if wanted != made:
            raise BuildError(
                "hyperlight: hypernet.output_shapes differ from mainnet.external_shapes(): "
                f"{sorted(set(wanted) ^ set(made)) or 'shapes differ'}"
            )
        scalars = {k: tuple(v) == (1,) for k, v in hypernet.input_shapes.items()}
        if not all(scalars.values()):
            bad = [k for k, ok in scalars.items() if not ok]
            raise BuildError(f"hyperlight: hyperparameters {bad} are not scalars (shape (1,))")
        self.names = sorted(hypernet.input_shapes)
        if sorted(grid) != self.names:
            raise BuildError(f"hyperlight: grid keys {sorted(grid)} differ from {self.names}")
        self.grid = {k: [float(v) for v in grid[k]] for k in self.names}
        self.input_shape = tuple(input_shape)

    def conditions(self) -> list[dict[str, Any]]:
        points = itertools.product(*(self.grid[k] for k in self.names))
        return [dict(zip(self.names, p)) for p in points]

    def _h(self, cond: dict[str, Any]) -> dict[str, torch.Tensor]:
        if sorted(cond) != self.names:
            raise BuildError(f"hyperlight: condition {cond!r} must name {self.names}")
        return {k: torch.tensor([float(cond[k])]) for k in self.names}

    def build(self, cond: dict[str, Any]) -> nn.Module:
        self._h(cond)
        return plain_mainnet(self.mainnet)

    def generate(self, cond: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = dict(self.build(cond).state_dict())
        with torch.no_grad():
            for name, w in self.hypernet(**self._h(cond)).items():
                state[name] = w.detach().clone()
        return state

    def example_inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1234)
        return (torch.randn(self.input_shape, generator=gen),)

    def generator(self) -> nn.Module:
        """The hypernet as G: one 1-element tensor per hyperparameter -> weights by name."""
        return HyperlightGenerator(self.hypernet, self.names)

    def generator_inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return tuple(self._h(cond)[k] for k in self.names)

    def generator_input_keys(self) -> list[str]:
        return list(self.names)

    def reference(self, cond: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """hyperlight's own path: `hypernet(h=...)`, then the main net `using_externals`."""
        with torch.no_grad():
            params = self.hypernet(**self._h(cond))
            with self.mainnet.using_externals(params):
                return self.mainnet(x)

    def fused(self) -> HyperlightFused:
        """The whole model as one module, `forward(x, h)`, with `example_inputs` set."""
        if len(self.names) != 1:
            raise BuildError(
                f"hyperlight: fused() takes one hyperparameter as the input h; {self.names}"
            )
        values = self.grid[self.names[0]]
        h = torch.tensor(values[len(values) // 2])
        return HyperlightFused(self.hypernet, self.mainnet, (self.example_inputs({})[0], h))


class HyperlightFused(nn.Module):
    """Hypernet and main net as one graph: `forward(x, h)` with `h` a 0-d tensor (one scalar
    hyperparameter), so the batch of `x` stays dynamic. Runs hyperlight's own modules: the
    hypernet's input flattening, backbone and output split, then the main net under
    `using_externals`, as hyperlight's examples do."""

    def __init__(
        self,
        hypernet: nn.Module,
        mainnet: nn.Module,
        example_inputs: tuple[torch.Tensor, ...] | None = None,
    ):
        super().__init__()
        self.hypernet, self.mainnet = hypernet.eval(), mainnet.eval()
        (self.h_name,) = hypernet.input_shapes
        self.example_inputs = example_inputs

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        flat = self.hypernet.flatten_inputs({self.h_name: h.reshape(1, 1)})
        encoded = _encode(flat, self.hypernet.encoding)
        params = self.hypernet.unflatten_output(self.hypernet.backbone(encoded))
        with self.mainnet.using_externals(params):
            y = self.mainnet(x)
        return y


class HyperlightGenerator(nn.Module):
    """`forward(*h)`: the hypernet's external parameters for hyperparameters `names` (each a
    1-element tensor), through hyperlight's own input flattening, encoding, backbone and output
    split (its range warning left out, as in `HyperlightFused`)."""

    def __init__(self, hypernet: nn.Module, names: list[str]):
        super().__init__()
        self.hypernet = hypernet.eval()
        self.names = list(names)

    def forward(self, *hs: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = self.hypernet.flatten_inputs({k: h.reshape(1, 1) for k, h in zip(self.names, hs)})
        encoded = _encode(flat, self.hypernet.encoding)
        return dict(self.hypernet.unflatten_output(self.hypernet.backbone(encoded)))


def _encode(z: torch.Tensor, mode: Any) -> torch.Tensor:
    """hyperlight's `encode_input` without the range check of "cos|sin": that check is a branch
    on the value of h whose only effect is a warning, which a graph cannot give."""
    if mode == "cos|sin":
        scaled = math.pi * z / 2
        return torch.cat([torch.cos(scaled), torch.sin(scaled)], dim=-1)
    from hyperlight.hypernet.encoding import encode_input

    return encode_input(z, mode)


def plain_mainnet(mainnet: nn.Module) -> nn.Module:
    """A copy of a hypernetize()d main net whose external parameters are ordinary (zero)
    parameters under the same names, and whose `Hypernetized<Module>` classes are the original
    modules again, so it exports like any network and loads the hypernet's output by name."""
    from hyperlight.convert import _hyper_class

    hl = _hyperlight()
    net = copy.deepcopy(mainnet)
    for module in net.modules():
        if not isinstance(module, hl.HyperModule):
            continue
        externals = dict(module._external_parameters)
        module._external_parameters.clear()
        for name, ext in externals.items():
            zeros = torch.zeros(tuple(ext.shape), dtype=ext.dtype or torch.float32)
            module.register_parameter(name, nn.Parameter(zeros, requires_grad=False))
        bases = type(module).__bases__
        if (
            len(bases) == 2
            and bases[1] is hl.HyperModule
            and type(module) is _hyper_class(bases[0])
        ):
            module.__class__ = bases[0]  # made by hypernetize(): the original module again
            del module.__dict__["_external_parameters"]
    return net.eval()
