"""ONNX Runtime: the ONNX graph is the artifact; weights bind as shared initializers.

Each weight stub of a graph is replaced by an OrtValue given to `SessionOptions.add_initializer`,
which ONNX Runtime uses in place: a tensor that several variants share is bound once (see
`SharedTensors`) and every session reads the same memory. ONNX Runtime's graph optimizer,
though, reads the values of initializers it folds (a weight's Transpose, conv + batch norm) from
the graph itself, where a stub has none: such a graph is loaded with its weights copied into
the session instead (`add_external_initializers`; `OrtRunner.shared` tells which). What ONNX
Runtime derives from weights (prepacked GEMM weights, folded constants) is per session.

Intra-op threads: every session gets a pool of its own (`per-session`), or all use ONNX
Runtime's process-wide pool (`shared`), as the bundle chose for the binding (see `hc.load`). The
process-wide pool is a fact of the process, not a setting: once it exists ONNX Runtime refuses
sessions a pool of their own, so it is made only before the first session hypercompile makes in
this process. Made later, it would change how every other bundle's next sessions must run."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...core.tensors import WEIGHT_STUB_LOCATION, sha256_bytes
from ...errors import BackendError, BundleError
from .base import Binding, OrtPool, RunnerFactory
from .onnx_scan import external_locations

# "pool": None until decided, then whether this process has ONNX Runtime's shared pool;
# "sessions": sessions made here so far (the pool can only come before the first)
_state: dict[str, Any] = {"pool": None, "sessions": 0}
_lock = threading.RLock()  # decisions about the pool and the sessions they apply to
_stub_folder: list[str] = []  # made once per process, see `stub_folder`


def stub_folder() -> str:
    """A private folder holding an empty file named like the weight stubs' location. ONNX
    Runtime checks that a stub's external-data file exists (relative to this folder, for a
    graph loaded from bytes) before it replaces the stub with its shared initializer; it never
    reads the file, and graphs naming any other location are refused before that."""
    with _lock:
        if not _stub_folder:
            folder = tempfile.mkdtemp(prefix="hypercompile-stubs-")
            (Path(folder) / WEIGHT_STUB_LOCATION).touch()
            atexit.register(shutil.rmtree, folder, True)
            _stub_folder.append(folder)
        return _stub_folder[0]


def pool_exists() -> bool:
    """Whether this process has ONNX Runtime's shared intra-op pool (then every session must
    use it)."""
    return _state["pool"] is True


def shared_pool() -> bool:
    """ONNX Runtime's process-wide intra-op pool: True when this process has it, made now if no
    session came before it; False when it cannot have it."""
    with _lock:
        if _state["pool"] is None:
            if _state["sessions"]:
                _state["pool"] = False  # sessions with pools of their own exist
            else:
                _state["pool"] = _make_pool()
        return bool(_state["pool"])


def _make_pool() -> bool:
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    try:
        _pybind_state.set_global_thread_pool_sizes(0, 1)
        so = ort.SessionOptions()
        so.use_per_session_threads = False
        _probe_session(so)  # fails if the environment existed already without the pool
        return True
    except Exception:
        return False


def _probe_session(so: Any) -> None:
    import onnxruntime as ort

    # the smallest valid model (Identity on a float[1]), serialized by onnx.helper
    model = bytes.fromhex(
        "080812003a370a100a017812017922084964656e746974791201675a0f0a0178120a0a0808011204"
        "0a020801620f0a0179120a0a08080112040a02080142040a00100d"
    )
    ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def check_session(model: bytes) -> Any:
    """A CPU session for a build-time check of a graph that holds its weights: one thread of
    its own, or the shared pool where this process has it (ONNX Runtime then refuses others)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # a failure is reported by the caller
    with _lock:
        if pool_exists():
            so.use_per_session_threads = False
        else:
            so.intra_op_num_threads = 1
        session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        _state["sessions"] += 1
    return session


# providers that compute in GPU memory, and the OrtValue device type of their outputs
_GPU_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


class OrtRunner:
    def __init__(self, session: Any, keepalive: list[Any], pool: OrtPool, shared: bool):
        self.session = session
        self.pool = pool  # the threads this session got ("shared" or "per-session")
        self.shared = shared  # whether the session reads the bundle's tensors in place
        self._keepalive = keepalive  # ORT reads shared initializers in place: keep them alive
        # The session's C++ run, without the Python wrapper's per-call checks (input names,
        # output list, OrtValue ownership): a tenth of a small block's call. Callers pass the
        # graph's input names with numpy arrays (the bundle checked them).
        self._names = [o.name for o in session.get_outputs()]
        inner = getattr(session, "_sess", None)
        self._inner = inner if callable(getattr(inner, "run", None)) else None
        # a program's blocks keep their outputs on the GPU the session computes on (see
        # `run_resident`); on the CPU provider numpy results cost no copy anyway
        first = session.get_providers()[0] if session.get_providers() else ""
        self.out_device = _GPU_PROVIDERS.get(first, "cpu")
        self.resident = self.out_device != "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._inner is not None:
            return self._inner.run(self._names, feeds, None)
        return self.session.run(None, feeds)

    def run_resident(self, feeds: dict[str, Any]) -> list[Any]:
        """`run` through I/O binding: feeds are numpy arrays or OrtValues (earlier blocks'
        outputs, wherever they are), outputs OrtValues left on the session's device."""
        import onnxruntime as ort

        io = self.session.io_binding()
        for name, v in feeds.items():
            if isinstance(v, ort.OrtValue):
                io.bind_ortvalue_input(name, v)
            else:
                io.bind_cpu_input(name, np.require(v, requirements="C"))
        for name in self._names:
            io.bind_output(name, self.out_device)
        self.session.run_with_iobinding(io)
        return list(io.get_outputs())

    @staticmethod
    def host(v: Any) -> Any:
        """A value as the host reads it: an OrtValue copied into a numpy array."""
        return v.numpy() if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else v


class OnnxRuntimeRunners(RunnerFactory):
    name = "onnxruntime"

    def available(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def session_options(self, binding: Binding) -> tuple[Any, OrtPool]:
        """Options for a session of `binding`, with the pool it gets. `shared` falls back to a
        pool of the session's own when the process cannot have the shared one, with spinning
        off (as for any DyNN program block: many sessions whose idle pools would spin and
        starve the one that runs; DyCL measured 6-12x slowdowns). `target.ort_threads` sizes
        pools of a session's own only."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if binding.ort_pool == "shared" and shared_pool():
            so.use_per_session_threads = False
            return so, "shared"
        if pool_exists():
            raise BackendError(
                "ONNX Runtime's shared thread pool exists in this process (a bundle loaded "
                "with ort_pool='shared', or a DyNN bundle loaded first), and ONNX Runtime then "
                "refuses sessions threads of their own: load this bundle with "
                "ort_pool='shared' or None"
            )
        threads = int(getattr(binding.target, "ort_threads", 0) or 0)
        if threads:
            so.intra_op_num_threads = threads
        if binding.in_program or binding.ort_pool == "shared":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so, "per-session"

    def load(self, binding: Binding) -> OrtRunner:
        import onnxruntime as ort

        target, weights = binding.target, binding.weights
        # the target's providers in preference order, those this ONNX Runtime has (a Jetson
        # bundle's graphs run on an x86 box's CPU provider; the CUDA one where it exists)
        wanted = list(getattr(target, "ort_providers", ()) or ["CPUExecutionProvider"])
        names = [p for p in wanted if p in ort.get_available_providers()]
        if not names:
            raise BackendError(
                f"ONNX Runtime here lacks provider(s) {', '.join(wanted)} "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        providers = provider_options(names, binding)
        _refuse_outside_data(binding.artifact, set(weights))
        held = binding.bind(
            ("onnxruntime",),
            lambda a: ort.OrtValue.ortvalue_from_numpy(np.require(a, requirements="C")),
        )
        values = {name: h.value for name, h in zip(weights, held)}
        with _lock:  # the pool cannot appear between the choice and the session
            shared = bool(values)
            try:
                session, pool = self._session(binding, providers, values, shared)
            except Exception:  # the optimizer wanted a stub's value: copy the weights in
                if not shared:
                    raise
                shared = False
                session, pool = self._session(binding, providers, values, shared)
            _state["sessions"] += 1
        return OrtRunner(session, [held, weights], pool, shared)

    def _session(
        self, binding: Binding, providers: list[Any], values: dict[str, Any], shared: bool
    ) -> tuple[Any, OrtPool]:
        """A session of the graph with `values` bound in place (`shared`) or copied in."""
        import onnxruntime as ort

        so, pool = self.session_options(binding)
        if shared:
            so.log_severity_level = 4  # a refusal here is retried with copies
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", stub_folder()
            )
            for name, value in values.items():
                so.add_initializer(name, value)
        elif values:
            so.add_external_initializers(list(values), list(values.values()))
        try:
            return ort.InferenceSession(binding.artifact, so, providers=providers), pool
        except Exception as e:  # ORT raises its own exception types
            if shared:
                raise
            first = f"ONNX Runtime cannot load the graph: {e}".splitlines()[0]
            raise BackendError(first) from None


def provider_options(names: list[str], binding: Binding) -> list[str | tuple[str, dict]]:
    """The providers for a session, TensorRT's with its options: engines and timing caches
    kept per device in the bundle's engine cache, fp16 where the target's TensorRT precision
    allows it. ONNX Runtime keys a cached engine by the graph's structure, not by its weights,
    so each weight set gets a folder of its own (two variants of one graph must not share an
    engine). Weight-stripped engines stay off: ONNX Runtime refits them from the weights in
    the model file, and a bundle's graphs hold stubs there, bound at load."""
    if "TensorrtExecutionProvider" not in names:
        return list(names)
    from ..fingerprint import fingerprint_key, local_fingerprint
    from .tensorrt import default_cache

    root = (binding.engine_cache or default_cache()) / "ort-tensorrt"
    root /= fingerprint_key(local_fingerprint())  # the ONNX Runtime version is part of it
    weights = json.dumps(sorted(binding.tensor_ids.items())).encode()
    key = sha256_bytes(binding.artifact + weights)[:32]
    precision = getattr(binding.target, "tensorrt_precision", "fp32")
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(root / key),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(root),
        "trt_fp16_enable": "True" if precision in ("fp16", "int8") else "False",
        "trt_weight_stripped_engine_enable": "False",
    }
    return [(n, options) if n == "TensorrtExecutionProvider" else n for n in names]


def _refuse_outside_data(model: bytes, bound: set[str]) -> None:
    """A graph may take tensor bytes from outside itself only through the weight stubs this
    runtime binds; anything else would make ONNX Runtime read a file it names."""
    for name, location in sorted(external_locations(model)):
        if location != WEIGHT_STUB_LOCATION or name not in bound:
            raise BundleError(
                f"an ONNX graph of the bundle takes tensor {name!r} from {location!r}: a "
                "bundle's graphs may only take their weights from the bundle's weight files"
            )


FACTORY = OnnxRuntimeRunners()
