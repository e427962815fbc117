"""ONNX Runtime: the ONNX graph is the artifact; weights bind as external initializers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError
from .base import Backend


_pool_state: list[bool] = []


def _shared_pool() -> bool:
    """Create ONNX Runtime's global intra-op pool once (it must precede the first session);
    False when the process already made its ONNX Runtime environment without one."""
    if not _pool_state:
        try:
            from onnxruntime.capi import _pybind_state

            _pybind_state.set_global_thread_pool_sizes(0, 1)
            _pool_state.append(True)
        except Exception:
            _pool_state.append(False)
    return _pool_state[0]


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

    def session_options(self, target: Any) -> Any:
        """Sessions share one process-wide thread pool: a DyNN program holds one session per
        block, and per-session pools that spin while idle starve the session that runs."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        threads = int(getattr(target, "ort_threads", 0) or 0)
        if (threads == 0 and _shared_pool()) or (_pool_state and _pool_state[0]):
            so.use_per_session_threads = False  # once the shared pool exists, all must use it
        else:
            so.intra_op_num_threads = threads
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def load(
        self, artifact: bytes, weights: dict[str, np.ndarray], target: Any, output_names: list[str]
    ) -> OrtRunner:
        import onnxruntime as ort

        so = self.session_options(target)
        names = list(weights)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[n])) for n in names]
        if names:
            so.add_external_initializers(names, values)
        providers = list(getattr(target, "ort_providers", ()) or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendError(
                f"ONNX Runtime here lacks provider(s) {', '.join(missing)} "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        try:
            session = ort.InferenceSession(artifact, so, providers=providers)
        except Exception as e:  # ORT raises its own exception types
            raise BackendError(f"ONNX Runtime cannot load the graph: {e}".splitlines()[0]) from None
        return OrtRunner(session, [values, weights])


BACKEND = OnnxRuntimeBackend()
