"""TensorRT: engines are built on the device, from the bundle's ONNX graph and the graph's recipe
(`tensorrt/<graph>.json`, written at build time), because an engine only runs on the GPU and
TensorRT version it was built with.

Per architecture one engine is built (refittable in the weights that vary between variants) and
cached per device: `<cache>/tensorrt/<device>/<TensorRT version>/<graph sha256>-<recipe>.engine`,
where `<device>` is this machine's fingerprint without the installed back ends (TensorRT's
version is its own level). Each variant's runner deserializes the engine and refits it with the
variant's weights; the bundle then runs its stored PyTorch checks on every such runner before it
answers (`RunnerFactory.checks_every_load`), because a refit can fail silently (a weight left
out, or folded into a constant by the builder).

TensorRT's API is reached only through `_trt()`, device memory only through `_device()` and the
GPU check through `_gpu_missing()`, so tests replace them with a test double
(`tests/trt_double.py`). The parts that need a real GPU
(`CudaMemory`, the int8 calibrator) are not exercised on machines without TensorRT."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core import tensors as fmt
from ...core.fields import Fields
from ...core.targets import host_arch
from ...errors import BackendError, BundleError
from .base import Binding, RunnerFactory
from .onnx_scan import with_weights

RECIPE_FORMAT = "hypercompile-tensorrt-recipe/1"
TENSORRT_MAJOR = 10  # recipes are written for TensorRT 10 (JetPack 6 ships 10.3)
# the tolerance of the on-device checks per precision, relative to the output's magnitude
# (never below the build's --rtol): fp32 runs with TF32 off, fp16 keeps ~3 decimal digits
CHECK_RTOL = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}


def default_cache() -> Path:
    """Where device-built artifacts are cached unless the bundle is loaded with another."""
    return Path.home() / ".cache" / "hypercompile"


def _trt() -> Any:
    """The `tensorrt` module (tests put a test double here)."""
    import tensorrt

    return tensorrt


def _device() -> Any:
    """Device memory and a stream for inputs and outputs (tests put a test double here)."""
    return CudaMemory()


def _gpu_missing() -> str | None:
    """Why this machine has no GPU TensorRT could use, or None (tests put None here)."""
    from .tvm import cuda_driver_version

    if cuda_driver_version() is None:
        return "this machine has no CUDA driver (libcuda)"
    return None


@dataclass
class Recipe:
    """How to build one graph's engine on the device: precision, the optimization profile per
    input (min/opt/max shapes), which weights vary between variants (refitted per variant) and
    which are built in (tensor ids, all variants share them), and the calibration data (int8)."""

    graph: str
    graph_sha256: str
    precision: str
    check_rtol: float
    profile: dict[str, dict[str, list[int]]]
    refit: list[str]
    built_in: dict[str, str]
    opset: int
    tensorrt: str = f">={TENSORRT_MAJOR}.0,<{TENSORRT_MAJOR + 1}"
    calibration: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"format": RECIPE_FORMAT, **self.__dict__}
        if self.calibration is None:
            del out["calibration"]
        return out

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()

    @staticmethod
    def loads(data: bytes, where: str = "TensorRT recipe") -> Recipe:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise BundleError(f"{where} is damaged: {e}") from None
        f = Fields(raw, where)
        if f.str("format") != RECIPE_FORMAT:
            raise BundleError(f"{where}: unknown format {raw.get('format')!r}")
        r = Recipe(
            graph=f.str("graph"),
            graph_sha256=f.str("graph_sha256"),
            precision=f.str("precision"),
            check_rtol=float(f.num("check_rtol")),
            profile=f.dict("profile"),
            refit=f.names("refit"),
            built_in=f.str_map("built_in"),
            opset=f.int("opset"),
            tensorrt=f.str("tensorrt"),
            calibration=f.get("calibration", (dict, type(None)), None),
        )
        f.done()
        if r.precision not in CHECK_RTOL:
            raise BundleError(f"{where}.precision {r.precision!r} is not fp32, fp16 or int8")
        for name, p in r.profile.items():
            if not isinstance(p, dict) or sorted(p) != ["max", "min", "opt"]:
                raise BundleError(f"{where}.profile.{name} must have min, opt and max")
        return r

    def digest(self) -> str:
        return hashlib.sha256(self.dumps()).hexdigest()


def engine_path(cache: Path, device: str, version: str, recipe: Recipe) -> Path:
    """The cache file of a recipe's engine on one device with one TensorRT version: the graph's
    hash, then the recipe's (precision, profile, refittable and built-in weights)."""
    name = f"{recipe.graph_sha256[:32]}-{recipe.digest()[:16]}.engine"
    return cache / "tensorrt" / device / version / name


def device_key() -> str:
    """This device, for engine caches: the fingerprint without the installed back ends."""
    from ..fingerprint import fingerprint_key, local_fingerprint

    fp = local_fingerprint()
    fp.pop("backends", None)
    return fingerprint_key(fp)


class CudaMemory:
    """Device buffers and one stream through cuda-bindings (the `jetson` extra). Untested on
    machines without a CUDA GPU."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise BackendError(
                "TensorRT needs cuda-bindings for device memory (pip install 'cuda-bindings>=12.6')"
            ) from None
        self.rt = cudart
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA runtime error {err}")
        return rest[0] if rest else None

    def alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def upload(self, ptr: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, self.stream))

    def download(self, arr: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, self.stream))

    def sync(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))


@dataclass
class EngineInfo:
    """Where a runner's engine came from: its cache file, whether this load built it (and in
    how many seconds), and the weights refitted for the runner's variant."""

    path: Path
    built: bool
    build_s: float = 0.0
    refitted: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": str(self.path),
            "built": self.built,
            "build_s": round(self.build_s, 3),
            "refitted": len(self.refitted),
        }


class TensorRTRunner:
    """One variant's refitted engine with an execution context; buffers grow as needed. Calls
    of one runner are serialized (one context, one stream)."""

    def __init__(self, trt: Any, engine: Any, binding: Binding, info: EngineInfo):
        self.engine, self.info = engine, info
        self.context = engine.create_execution_context()
        self._trt = trt
        self._dev = _device()
        self._inputs = [i["name"] for i in binding.inputs]
        self._outputs = [(o["name"], np.dtype(o["dtype"])) for o in binding.outputs]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._lock = threading.Lock()

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, -1))
        if size < nbytes:
            if size >= 0:
                self._dev.free(ptr)
            ptr = self._dev.alloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        ctx, dev = self.context, self._dev
        with self._lock:
            for name in self._inputs:
                a = np.ascontiguousarray(feeds[name])
                if not ctx.set_input_shape(name, tuple(a.shape)):
                    raise BackendError(
                        f"TensorRT: input {name!r} of shape {list(a.shape)} is outside the "
                        "engine's optimization profile"
                    )
                ptr = self._buffer(name, a.nbytes)
                dev.upload(ptr, a)
                ctx.set_tensor_address(name, ptr)
            outs = []
            for name, dtype in self._outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
                engine_dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
                out = np.empty(shape, engine_dtype)
                ctx.set_tensor_address(name, self._buffer(name, out.nbytes))
                outs.append((name, out, dtype))
            if not ctx.execute_async_v3(dev.stream):
                raise BackendError("TensorRT: the engine failed to run")
            for name, out, _ in outs:
                dev.download(out, self._buffers[name][0])
            dev.sync()
        return [out if out.dtype == dtype else out.astype(dtype) for _, out, dtype in outs]


class TensorRTRunners(RunnerFactory):
    name = "tensorrt"
    checks_every_load = True  # every runner is a fresh refit (or build): check each one

    def available(self) -> str | None:
        try:
            _trt()
        except ImportError:
            return (
                "TensorRT is not installed here (it comes with JetPack on a Jetson; elsewhere "
                "pip install tensorrt): TensorRT bundles build anywhere and run on the device"
            )
        return None

    def runs_here(self, target: Any) -> str | None:
        if getattr(target, "arch", host_arch()) != host_arch():
            return f"this machine is {host_arch()}"
        reason = self.available()
        if reason:
            return reason
        version = str(_trt().__version__)
        if version.split(".")[0] != str(TENSORRT_MAJOR):
            return f"its recipes are for TensorRT {TENSORRT_MAJOR}.x and this machine has {version}"
        return _gpu_missing()

    def load(self, binding: Binding) -> TensorRTRunner:
        reason = self.runs_here(binding.target)
        if reason:
            raise BackendError(f"TensorRT engines cannot be built here: {reason}")
        trt = _trt()
        recipe = Recipe.loads(binding.artifact)
        if fmt.sha256_bytes(binding.graph) != recipe.graph_sha256:
            raise BundleError(f"the TensorRT recipe of graph {recipe.graph} names another graph")
        for name, tid in recipe.built_in.items():
            if binding.tensor_ids.get(name, tid) != tid:
                raise BundleError(
                    f"graph {recipe.graph}: weight {name!r} is built into the TensorRT engine, "
                    "but this variant binds another value to it"
                )
        logger = trt.Logger(trt.Logger.WARNING)
        cache = binding.engine_cache or default_cache()
        path = engine_path(cache, device_key(), str(trt.__version__), recipe)
        engine, info = None, EngineInfo(path, built=False)
        if path.is_file():  # a damaged or foreign file deserializes to None: build again
            engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            t = time.perf_counter()
            plan = build_engine(trt, logger, binding, recipe)
            _write_atomic(path, plan)
            engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
            if engine is None:
                raise BackendError(f"TensorRT cannot load the engine it built for {recipe.graph}")
            info = EngineInfo(path, built=True, build_s=time.perf_counter() - t)
        info.refitted = refit(trt, logger, engine, binding, recipe)
        return TensorRTRunner(trt, engine, binding, info)


def _network(trt: Any, logger: Any, binding: Binding, recipe: Recipe) -> tuple[Any, Any, Any]:
    """The graph parsed into a TensorRT network, with the variant's weights in place of the
    stubs (the builder needs values: built-in weights are final, refittable ones are refitted
    per variant)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(with_weights(binding.graph, binding.weights)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else "no reason given"
        raise BackendError(f"TensorRT's ONNX parser refuses graph {recipe.graph}: {first}")
    for name in recipe.refit:
        if not network.mark_weights_refittable(name):
            raise BackendError(
                f"graph {recipe.graph}: TensorRT's network has no weight {name!r} to make "
                "refittable (the parser folded it), so variants cannot bind their own"
            )
    return builder, network, parser


def build_engine(trt: Any, logger: Any, binding: Binding, recipe: Recipe) -> bytes:
    """A serialized engine for the recipe, built with this binding's weights."""
    builder, network, _parser = _network(trt, logger, binding, recipe)
    config = builder.create_builder_config()
    if recipe.refit:
        config.set_flag(trt.BuilderFlag.REFIT_INDIVIDUAL)
    if recipe.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # as PyTorch computes it (checked against)
    else:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, dims in recipe.profile.items():
        profile.set_shape(name, dims["min"], dims["opt"], dims["max"])
    config.add_optimization_profile(profile)
    if recipe.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_calibration_profile(profile)
        config.int8_calibrator = calibrator(trt, binding, recipe)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT failed to build an engine for graph {recipe.graph}")
    return bytes(plan)


def refit(trt: Any, logger: Any, engine: Any, binding: Binding, recipe: Recipe) -> list[str]:
    """Refit the engine's refittable weights with this variant's; returns their names. A
    weight the recipe needs refittable that the engine lacks (the builder folded it into a
    constant) fails loudly, as does a refit TensorRT says is incomplete."""
    if not recipe.refit:
        return []
    refitter = trt.Refitter(engine, logger)
    have = set(refitter.get_all_weights())
    lost = [n for n in recipe.refit if n not in have]
    if lost:
        raise BackendError(
            f"graph {recipe.graph}: the TensorRT engine cannot refit weight(s) "
            f"{', '.join(lost[:5])} (folded into constants when it was built), so it would "
            "answer with another variant's weights: run this bundle on onnxruntime or tvm"
        )
    keep = []  # TensorRT reads the arrays when it refits, not when they are set
    for name in recipe.refit:
        arr = np.ascontiguousarray(binding.weights[name])
        keep.append(arr)
        if not refitter.set_named_weights(name, trt.Weights(arr)):
            raise BackendError(f"graph {recipe.graph}: TensorRT refuses weight {name!r}")
    missing = list(refitter.get_missing_weights())
    if missing:
        raise BackendError(
            f"graph {recipe.graph}: TensorRT's refit still misses {', '.join(missing[:5])}"
        )
    if not refitter.refit_cuda_engine():
        raise BackendError(f"graph {recipe.graph}: TensorRT's refit failed")
    return list(recipe.refit)


def calibrator(trt: Any, binding: Binding, recipe: Recipe) -> Any:
    """An int8 entropy calibrator over the calibration inputs the bundle stores (one sample a
    batch). Minimal, and untested on machines without TensorRT."""
    if recipe.calibration is None or binding.read is None:
        raise BundleError(f"graph {recipe.graph}: int8 recipe without calibration data")
    data = fmt.read_tensors(binding.read(recipe.calibration["file"]), "calibration data")
    samples = [
        {n: np.ascontiguousarray(a[i : i + 1]) for n, a in data.items()}
        for i in range(int(recipe.calibration["samples"]))
    ]
    dev = _device()

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.next = 0
            self.ptrs = {n: dev.alloc(a[0:1].nbytes) for n, a in data.items()}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.next >= len(samples):
                return None
            feeds = samples[self.next]
            self.next += 1
            for n in names:
                dev.upload(self.ptrs[n], feeds[n])
            dev.sync()
            return [self.ptrs[n] for n in names]

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return Calibrator()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


FACTORY = TensorRTRunners()
