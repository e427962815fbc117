"""The run half of a back end, on the device: bind a variant's weights to a verified artifact and
run it. Torch-free; never imports onnx, the compilers or the builder."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

OrtPool = Literal["shared", "per-session"]
ORT_POOLS = ("shared", "per-session")


class Runner(Protocol):
    """A ready-to-run artifact for one variant (a graph with its weights bound)."""

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Held:
    """One bound tensor (an OrtValue, a TVM tensor); runners keep these to keep it alive."""

    __slots__ = ("value", "__weakref__")

    def __init__(self, value: Any):
        self.value = value


class SharedTensors:
    """A bundle's bound tensors, by (back end key, tensor id): each distinct tensor is bound
    once and shared by every runner that takes it, for as long as one of them holds it (so an
    evicted runner's tensors go with it when no other runner uses them)."""

    def __init__(self) -> None:
        self._held: weakref.WeakValueDictionary[tuple, Held] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], Any]) -> Held:
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = Held(make())
            return held


@dataclass(frozen=True)
class Binding:
    """What a runner is made of: one verified artifact and the weights it binds, and how the
    bundle wants it run."""

    artifact: bytes
    weights: dict[str, np.ndarray]  # in the graph's weight order
    target: Any
    inputs: list[dict[str, Any]]  # the graph's input specs (name, dtype, shape)
    outputs: list[dict[str, Any]]  # the graph's output specs
    in_program: bool = False  # one of a DyNN program's block runners (many, one runs at a time)
    # ONNX Runtime's intra-op threads, as the bundle chose them (see `hc.load`): "shared", the
    # process-wide pool, or "per-session", a pool of the session's own
    ort_pool: OrtPool = "per-session"
    tensor_ids: dict[str, str] = field(default_factory=dict)  # weight name -> tensor id
    shared: SharedTensors = field(default_factory=SharedTensors)  # the bundle's bound tensors
    # for back ends whose artifact is not the graph (a TensorRT recipe): the ONNX graph itself
    graph: bytes = b""
    # other bundle files an artifact names (TensorRT's calibration data), read and hash-checked
    read: Callable[[str], bytes] | None = None
    # where artifacts made on the device are cached (TensorRT engines, ONNX Runtime's
    # TensorRT provider); None: ~/.cache/hypercompile
    engine_cache: Path | None = None

    def bind(self, kind: tuple, make: Callable[[np.ndarray], Any]) -> list[Held]:
        """Each weight bound by `make(array)`, in order: a tensor with an id is bound once per
        `kind` (back end, device) and shared; one without is bound for this runner alone."""
        out = []
        for name, arr in self.weights.items():
            tid = self.tensor_ids.get(name)
            if tid is None:
                out.append(Held(make(arr)))
            else:
                out.append(self.shared.get((*kind, tid), lambda a=arr: make(a)))
        return out


class RunnerFactory:
    """Base class. Subclasses live in `hypercompile/runtime/runners/<name>.py`, import their
    runtime lazily, and must not import torch, onnx or the compilers."""

    name = ""
    # the artifact is made on the device when a runner loads (TensorRT: an engine built or
    # refitted), so the bundle runs its stored checks on every runner, not once per variant
    checks_every_load = False

    def available(self) -> str | None:
        """None when this back end's runtime is installed here, else a one-line reason."""
        return None

    def runs_here(self, target: Any) -> str | None:
        """None when artifacts built for `target` can run on this machine, else why not."""
        return None

    def load(self, binding: Binding) -> Runner:
        """Bind one variant's weights to a compiled artifact and return a runner."""
        raise NotImplementedError
