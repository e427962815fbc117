"""Where a variant's weights come from: the bundle's content-addressed tensor files, each
distinct tensor read once while something holds it, checked against its id and against the
graph stubs that take it. Weights stored as float16 (`weight_dtype`) are bound as float32; a
generated variant's other weights come from its generator (`runtime/generate.py`)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core import tensors as fmt
from ..core.manifest import Manifest, Variant
from ..errors import BundleError


class TensorStore:
    """A bundle's stored tensors; `read(rel)` gives a bundle file's checked bytes."""

    def __init__(self, path: Path, manifest: Manifest, read: Callable[[str], bytes]):
        self.path, self.manifest, self.read = path, manifest, read
        # each distinct tensor read once while something holds it (a runner, a stream)
        self._arrays: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._stubs: dict[str, dict[str, tuple[Any, tuple[int, ...]]]] = {}  # per graph

    def weights(self, variant: Variant) -> dict[str, np.ndarray]:
        """A variant's stored weights by initializer name, read-only; variants that share a
        tensor get the same array."""
        return self.tensors(variant.weights)

    def tensors(self, ids: dict[str, str]) -> dict[str, np.ndarray]:
        """The stored tensors `ids` names (name -> tensor id), by name, read-only."""
        with self._lock:
            arrays = {tid: self._arrays.get(tid) for tid in set(ids.values())}
            todo: dict[str, list[str]] = {}  # file -> ids to read from it
            for tid in sorted(t for t, a in arrays.items() if a is None):
                todo.setdefault(self.manifest.tensors[tid].file, []).append(tid)
            for rel, tids in todo.items():
                stored = fmt.read_tensors(self.read(rel), rel)
                for tid in tids:
                    arrays[tid] = self._arrays[tid] = self._stored(stored, rel, tid)
        return {name: arrays[tid] for name, tid in ids.items()}  # type: ignore[misc]

    def _stored(self, stored: dict[str, np.ndarray], rel: str, tid: str) -> np.ndarray:
        """Tensor `tid` of file `rel`; one stored under its id must hash to it."""
        key = self.manifest.tensors[tid].key
        if key not in stored:
            raise BundleError(f"{self.path}: {rel} lacks tensor {key!r}")
        arr = stored[key]
        if key == tid and fmt.tensor_id(arr) != tid:
            raise BundleError(
                f"{self.path}: tensor {tid} in {rel} does not match its id (sha256 of its "
                "dtype, shape and bytes)"
            )
        if self.manifest.weight_dtype == "float16" and arr.dtype == np.float16:
            arr = arr.astype(np.float32)  # stored as float16, computed in float32
            arr.flags.writeable = False
        return arr

    def check(self, gid: str, weights: dict[str, np.ndarray]) -> None:
        """Each weight graph `gid` takes has the dtype and shape of the graph's stub for it."""
        graph = self.manifest.graphs[gid]
        if gid not in self._stubs:
            from .runners.onnx_scan import weight_stubs

            self._stubs[gid] = weight_stubs(self.read(graph.path))
        stubs = self._stubs[gid]
        for name in graph.weights:
            if name not in weights or name not in stubs:
                where = "the variant's tensors" if name not in weights else f"graph {gid}"
                raise BundleError(f"{self.path}: {where} lack weight {name!r}")
            dtype, shape = stubs[name]
            arr = weights[name]
            if arr.dtype != dtype or arr.shape != shape:
                want = f"{dtype} {list(shape)}"
                raise BundleError(
                    f"{self.path}: weight {name!r} of graph {gid} is {arr.dtype} "
                    f"{list(arr.shape)}, the graph takes {want}"
                )
