"""Stateful variants: a model that keeps state between calls (a running statistic, a recurrent
hidden state kept in `self.h`) was built with that state as explicit graph inputs and outputs.
Its answers depend on every earlier call, so the runtime runs it only as a stream that carries
the state from one call to the next, starting from the value stored in the bundle."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..core.manifest import Graph
from .runners import Runner


class StateCarrier:
    """A runner (user feeds -> user outputs) over a stateful graph's runner: each call feeds the
    current state in and keeps the state that comes out. Calls are serialized: a stream is one
    sequence. Other attributes read through to the graph's runner."""

    def __init__(self, runner: Runner, graph: Graph, initial: dict[str, np.ndarray]):
        self.inner = runner
        self._graph = graph
        self._initial = {s.key: initial[s.input] for s in graph.state}
        self._outputs = [o.name for o in graph.user_io()[1]]
        self._lock = threading.Lock()
        self.state: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.state = {k: v.copy() for k, v in self._initial.items()}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            full = dict(feeds)
            full.update({s.input: self.state[s.key] for s in self._graph.state})
            named = dict(zip(self._graph.output_names, self.inner.run(full)))
            self.state = {s.key: named[s.output] for s in self._graph.state}
        return [named[n] for n in self._outputs]

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class Stream:
    """One sequence of calls of a stateful variant (see `Bundle.stream`): `run(inputs)` answers
    like the model's n-th call and advances the state; `reset()` starts over from the bundle's
    initial state; `state` is the current state by attribute name (copies)."""

    def __init__(self, carrier: StateCarrier, check_inputs: Any, output_names: list[str]):
        self._carrier = carrier
        self._check = check_inputs
        self._names = output_names

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check(inputs)
        return dict(zip(self._names, self._carrier.run(inputs)))

    def reset(self) -> None:
        self._carrier.reset()

    @property
    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._carrier.state.items()}

    def __repr__(self) -> str:
        return f"Stream(state={', '.join(self._carrier.state)})"
