"""ONNX Runtime: the ONNX graph is the artifact; weights bind as external initializers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError
from .base import Backend, Binding

_pool: dict[str, bool] = {}


def shared_pool() -> bool:
    """ONNX Runtime's process-wide intra-op pool, created on first use. It can only be made
    before the process's first session; afterwards every session in the process must use it."""
    if "on" not in _pool:
        import onnxruntime as ort
        from onnxruntime.capi import _pybind_state

        try:
            _pybind_state.set_global_thread_pool_sizes(0, 1)
            so = ort.SessionOptions()
            so.use_per_session_threads = False
            _probe_session(so)  # fails if the environment existed already without the pool
            _pool["on"] = True
        except Exception:
            _pool["on"] = False
    return _pool["on"]


def _probe_session(so: Any) -> None:
    import onnxruntime as ort

    # the smallest valid model (Identity on a float[1]), serialized by onnx.helper
    model = bytes.fromhex(
        "080812003a370a100a017812017922084964656e746974791201675a0f0a0178120a0a0808011204"
        "0a020801620f0a0179120a0a08080112040a02080142040a00100d"
    )
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


class OrtRunner:
    def __init__(self, session: Any, keepalive: list[Any]):
        self.session = session
        self._keepalive = keepalive  # ORT reads bound initializers in place: keep them alive

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def available(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def compile(self, graph_path: Path, bundle_dir: Path, graph_id: str, target: Any) -> str:
        return graph_path.relative_to(bundle_dir).as_posix()

    def session_options(self, target: Any, shared: bool = False) -> Any:
        """`shared`: use the process-wide thread pool. A DyNN program holds one session per
        block, and per-session pools that spin while idle starve the session that runs (DyCL
        measured 6-12x slowdowns); static variants keep ONNX Runtime's per-session default."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        threads = int(getattr(target, "ort_threads", 0) or 0)
        use_pool = _pool.get("on", False) or (
            shared and threads == 0 and getattr(target, "ort_shared_pool", True) and shared_pool()
        )
        if use_pool:
            so.use_per_session_threads = False  # once the pool exists, every session uses it
        else:
            if threads:
                so.intra_op_num_threads = threads
            if shared:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def load(self, binding: Binding) -> OrtRunner:
        import onnxruntime as ort

        target, weights = binding.target, binding.weights
        so = self.session_options(target, binding.shared)
        names = list(weights)
        values = [
            ort.OrtValue.ortvalue_from_numpy(np.require(weights[n], requirements="C"))
            for n in names
        ]
        if names:
            so.add_external_initializers(names, values)
        # the target's providers in preference order, those this ONNX Runtime has (a Jetson
        # bundle's graphs run on an x86 box's CPU provider; the CUDA one where it exists)
        wanted = list(getattr(target, "ort_providers", ()) or ["CPUExecutionProvider"])
        providers = [p for p in wanted if p in ort.get_available_providers()]
        if not providers:
            raise BackendError(
                f"ONNX Runtime here lacks provider(s) {', '.join(wanted)} "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        try:
            session = ort.InferenceSession(binding.artifact, so, providers=providers)
        except Exception as e:  # ORT raises its own exception types
            raise BackendError(f"ONNX Runtime cannot load the graph: {e}".splitlines()[0]) from None
        return OrtRunner(session, [values, weights])


BACKEND = OnnxRuntimeBackend()
