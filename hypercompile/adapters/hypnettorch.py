"""Adapter for hypnettorch (PyPI `hypnettorch`): a hypernet (HMLP, ChunkedHMLP, ...) that
generates the weights of a main network (`MainNetInterface`: MLP, LeNet, ResNet, ...) per task.

The materialized target is a copy of the main net whose generated weights are ordinary
tensors and whose batch-norm statistics are the chosen task's, so every task shares one graph.
`generator()` is the hypernet itself, from a task embedding to the generated weights, so a
bundle can store it and the tasks' embeddings instead of every task's weights
(`build --storage generate`), and run a new task's embedding (`embedding=[...]`).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from ..errors import BuildError


class HypnetTarget(nn.Module):
    """A main net with one task's weights as parameters (`weights.<i>` follows param_shapes)."""

    def __init__(self, mnet: nn.Module, stats_id: int | None):
        super().__init__()
        self.net = copy.deepcopy(mnet).eval()
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.zeros(s), requires_grad=False) for s in mnet.param_shapes]
        )
        for layer in self.net.batchnorm_layers or []:
            _keep_one_stats(layer, stats_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward(x, weights=list(self.weights))


def _keep_one_stats(layer: nn.Module, stats_id: int | None) -> None:
    """Prune a hypnettorch BatchNormLayer to one set of running stats, stored as set 0."""
    if layer.num_stats == 0:
        return
    mean, var = layer.get_stats(stats_id)
    mean, var = mean.detach().clone(), var.detach().clone()
    for k in range(int(layer.num_stats)):
        for name in layer._stats_names(k):
            delattr(layer, name)
    m0, v0 = layer._stats_names(0)
    layer.register_buffer(m0, mean)
    layer.register_buffer(v0, var)
    # a Python count keeps hypnettorch's `stats_id < num_stats` checks out of the graph
    delattr(layer, "_num_stats")
    layer._num_stats = 1


class HypnettorchModel:
    """HyperModel over a hypnettorch hypernet and main net, one condition `{"task": t}` per task.

    `hnet(cond_id=t)` must produce `mnet.hyper_shapes_learned`; weights the main net keeps
    itself are shared by every task. When every batch-norm layer holds a set of running stats per
    task (`checkpoint_stats()` after each task), task t uses set t.
    """

    def __init__(
        self,
        hnet: nn.Module,
        mnet: nn.Module,
        *,
        num_tasks: int | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        self.hnet, self.mnet = hnet.eval(), mnet.eval()
        self.num_tasks = int(num_tasks if num_tasks is not None else hnet.num_known_conds)
        if self.num_tasks < 1:
            raise BuildError("hypnettorch hypernet has no task embeddings (num_cond_embs=0)")
        learned = [list(s) for s in mnet.hyper_shapes_learned or []]
        if [list(s) for s in hnet.target_shapes] != learned:
            raise BuildError(
                "hypnettorch: hnet.target_shapes differ from mnet.hyper_shapes_learned"
            )
        self.input_shape = tuple(input_shape or _default_input_shape(mnet))
        bns = list(mnet.batchnorm_layers or [])
        self.per_task_stats = bool(bns) and all(b.num_stats >= self.num_tasks for b in bns)

    def conditions(self) -> list[dict[str, Any]]:
        return [{"task": t} for t in range(self.num_tasks)]

    def _task(self, cond: dict[str, Any]) -> int:
        t = cond.get("task")
        if not isinstance(t, int) or not 0 <= t < self.num_tasks:
            raise BuildError(f"hypnettorch: unknown task {t!r} (0..{self.num_tasks - 1})")
        return t

    def _stats_id(self, cond: dict[str, Any]) -> int | None:
        task = self._task(cond)
        return task if self.per_task_stats else None

    def _full_weights(self, cond: dict[str, Any]) -> list[torch.Tensor]:
        """All of param_shapes: generated where learned, the main net's own elsewhere."""
        generated = self.hnet.forward(cond_id=self._task(cond))
        n = len(self.mnet.param_shapes)
        full: list[torch.Tensor | None] = [None] * n
        internal = list(self.mnet.internal_params or [])
        # hypnettorch leaves a *_ref list empty when it covers every parameter in order
        learned_ref = self.mnet.hyper_shapes_learned_ref or range(len(generated))
        internal_ref = self.mnet.internal_params_ref or range(len(internal))
        for ref, w in zip(learned_ref, generated):
            full[ref] = w
        for ref, w in zip(internal_ref, internal):
            full[ref] = w
        if any(w is None for w in full):
            raise BuildError("hypnettorch: some main-net parameters are neither generated nor held")
        return full  # type: ignore[return-value]

    def build(self, cond: dict[str, Any]) -> nn.Module:
        return HypnetTarget(self.mnet, self._stats_id(cond))

    def generate(self, cond: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = dict(self.build(cond).state_dict())
        with torch.no_grad():
            for i, w in enumerate(self._full_weights(cond)):
                state[f"weights.{i}"] = w.detach().clone()
        return state

    def example_inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1234)
        return (torch.randn(self.input_shape, generator=gen),)

    def generator(self) -> nn.Module:
        """The hypernet as G: a task embedding -> the generated main-net weights by name."""
        return HypnetGenerator(self.hnet, self.mnet)

    def generator_inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return (self.hnet.get_cond_in_emb(self._task(cond)).detach().clone(),)

    def generator_input_keys(self) -> list[str]:
        """A task not listed at build time gives its embedding as `embedding=[...]`."""
        return ["embedding"]

    def reference(self, cond: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """The path a hypnettorch user runs: hnet(cond_id=t) -> mnet.forward(x, weights=...)."""
        with torch.no_grad():
            weights = self.hnet.forward(cond_id=self._task(cond))
            return self.mnet.forward(x, weights=weights, condition=self._stats_id(cond))


class HypnetGenerator(nn.Module):
    """`forward(embedding)`: hnet(cond_input=embedding) as the `weights.<i>` of HypnetTarget."""

    def __init__(self, hnet: nn.Module, mnet: nn.Module):
        super().__init__()
        self.hnet = hnet.eval()
        # hypnettorch leaves a *_ref list empty when it covers every parameter in order
        n = len(mnet.hyper_shapes_learned or [])
        self.refs = list(mnet.hyper_shapes_learned_ref or range(n))

    def forward(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.hnet.forward(cond_input=embedding.reshape(1, -1))
        return {f"weights.{ref}": w for ref, w in zip(self.refs, weights)}


def _default_input_shape(mnet: nn.Module) -> tuple[int, ...]:
    if getattr(mnet, "_in_shape", None) is not None:  # conv nets take flattened images
        return (1, math.prod(mnet._in_shape))
    meta = getattr(mnet, "_param_shapes_meta", None) or []
    for shape, info in zip(mnet.param_shapes, meta):  # an MLP: the first layer's fan-in
        if info.get("name") == "weight" and len(shape) == 2:
            return (1, int(shape[1]))
    raise BuildError("hypnettorch: cannot tell the main net's input shape; pass input_shape=")
