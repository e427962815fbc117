"""A TEST DOUBLE of TensorRT's Python API, not TensorRT: the few calls the tensorrt runner
makes, answered by ONNX Runtime on the CPU, so that the orchestration around real TensorRT
(recipes, engine cache, refit mapping, checks before answers) is tested on machines without
it. `FakeDevice` stands in for CUDA memory with host memory.

What it imitates: a parsed network's weights are named after the ONNX initializers; a
refittable engine keeps the weights marked refittable and refits them by name; a serialized
engine round-trips through bytes; an execution context reads inputs from and writes outputs to
the addresses it is given. Knobs reproduce the failures users report: `fold` (the builder
folds a weight into a constant, so the engine cannot refit it), `refit_ignores` (a refit that
leaves a weight out silently), `fp16` (answers rounded through float16)."""

from __future__ import annotations

import ctypes
import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def _host(ptr: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr))[:nbytes]


class FakeDevice:
    """Host memory in place of device memory: pointers are addresses of numpy buffers."""

    stream = 0

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(max(int(nbytes), 1), np.uint8)
        self.buffers[buf.ctypes.data] = buf
        return buf.ctypes.data

    def free(self, ptr: int) -> None:
        self.buffers.pop(ptr, None)

    def upload(self, ptr: int, arr: np.ndarray) -> None:
        _host(ptr, arr.nbytes)[:] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)

    def download(self, arr: np.ndarray, ptr: int) -> None:
        arr.reshape(-1).view(np.uint8)[:] = _host(ptr, arr.nbytes)

    def sync(self) -> None:
        pass


class FakeTensorRT:
    """Stands in for the `tensorrt` module. `builds` counts engines built; `refits` lists the
    weight names of every refit, in order."""

    __version__ = "10.3.0.fake"

    def __init__(self, fold: set[str] = frozenset(), refit_ignores: set[str] = frozenset()) -> None:
        self.fold, self.refit_ignores = set(fold), set(refit_ignores)
        self.builds = 0
        self.refits: list[list[str]] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level: int = 2) -> None:
                pass

        class BuilderFlag:
            FP16, INT8, REFIT, TF32, REFIT_INDIVIDUAL = "FP16", "INT8", "REFIT", "TF32", "RI"

        class Network:
            def __init__(self) -> None:
                self.model: onnx.ModelProto | None = None
                self.refittable: list[str] = []

            def mark_weights_refittable(self, name: str) -> bool:
                names = {t.name for t in self.model.graph.initializer}
                if name in names:
                    self.refittable.append(name)
                return name in names

        class OnnxParser:
            def __init__(self, network: Network, logger: Any) -> None:
                self.network, self.errors = network, []

            def parse(self, model: bytes) -> bool:
                m = onnx.load_model_from_string(model)
                stubs = [t.name for t in m.graph.initializer if t.external_data]
                if stubs:  # TensorRT cannot read hypercompile's weight stubs
                    self.errors.append(f"initializer {stubs[0]} has external data")
                    return False
                self.network.model = m
                return True

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> str:
                return self.errors[i]

        class Config:
            def __init__(self) -> None:
                self.flags: set[str] = {BuilderFlag.TF32}
                self.profiles: list[dict] = []
                self.int8_calibrator = None

            def set_flag(self, f: str) -> None:
                self.flags.add(f)

            def clear_flag(self, f: str) -> None:
                self.flags.discard(f)

            def add_optimization_profile(self, p: Profile) -> int:
                self.profiles.append(p.shapes)
                return len(self.profiles) - 1

            def set_calibration_profile(self, p: Profile) -> None:
                pass

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple] = {}

            def set_shape(self, name: str, lo: list, opt: list, hi: list) -> None:
                self.shapes[name] = (list(lo), list(opt), list(hi))

        class Builder:
            def __init__(self, logger: Any) -> None:
                pass

            def create_network(self, flags: int = 0) -> Network:
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                fake.builds += 1
                refit = "RI" in config.flags
                head = {
                    "refittable": [n for n in network.refittable if n not in fake.fold]
                    if refit
                    else [],
                    "fp16": "FP16" in config.flags,
                    "profile": config.profiles[0],
                }
                return json.dumps(head).encode() + b"\n" + network.model.SerializeToString()

        class Engine:
            def __init__(self, head: dict, model: onnx.ModelProto) -> None:
                self.head, self.model = head, model
                self.weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
                self.session = None

            def create_execution_context(self) -> Context:
                return Context(self)

            def get_tensor_dtype(self, name: str) -> str:
                vi = next(v for v in self.model.graph.output if v.name == name)
                return str(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))

            def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                if self.session is None:
                    m = onnx.ModelProto()
                    m.CopyFrom(self.model)
                    for t in m.graph.initializer:
                        t.CopyFrom(numpy_helper.from_array(self.weights[t.name], t.name))
                    self.session = ort.InferenceSession(
                        m.SerializeToString(), providers=["CPUExecutionProvider"]
                    )
                names = [o.name for o in self.model.graph.output]
                outs = self.session.run(names, feeds)
                if self.head["fp16"]:
                    outs = [
                        o.astype(np.float16).astype(o.dtype) if o.dtype.kind == "f" else o
                        for o in outs
                    ]
                return dict(zip(names, outs))

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
                head, sep, model = bytes(plan).partition(b"\n")
                try:
                    return Engine(json.loads(head), onnx.load_model_from_string(model))
                except (ValueError, onnx.onnx_cpp2py_export.checker.ValidationError):
                    return None

        class Weights:
            def __init__(self, a: np.ndarray) -> None:
                self.array = a

        class Refitter:
            def __init__(self, engine: Engine, logger: Any) -> None:
                self.engine, self.pending = engine, {}

            def get_all_weights(self) -> list[str]:
                return list(self.engine.head["refittable"])

            def set_named_weights(self, name: str, w: Weights) -> bool:
                if name not in self.engine.head["refittable"]:
                    return False
                if name not in fake.refit_ignores:  # the pitfall: accepted, then not applied
                    self.pending[name] = np.array(w.array)
                return True

            def get_missing_weights(self) -> list[str]:
                return []

            def refit_cuda_engine(self) -> bool:
                self.engine.weights.update(self.pending)
                self.engine.session = None
                fake.refits.append(sorted(self.pending))
                return True

        class Context:
            def __init__(self, engine: Engine) -> None:
                self.engine = engine
                self.shapes: dict[str, tuple] = {}
                self.addresses: dict[str, int] = {}
                self.outputs: dict[str, np.ndarray] = {}

            def set_input_shape(self, name: str, shape: tuple) -> bool:
                lo, _, hi = self.engine.head["profile"][name]
                ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
                self.shapes[name] = tuple(shape)
                self.outputs = {}
                return ok

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                self.addresses[name] = ptr
                return True

            def _inputs(self) -> dict[str, np.ndarray]:
                feeds = {}
                for vi in self.engine.model.graph.input:
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                    shape = self.shapes[vi.name]
                    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                    raw = _host(self.addresses[vi.name], n).copy()
                    feeds[vi.name] = raw.view(dtype).reshape(shape)
                return feeds

            def get_tensor_shape(self, name: str) -> tuple:
                # a real engine infers output shapes from the input shapes alone; the double
                # runs the graph on the inputs already uploaded to find them
                if not self.outputs:
                    self.outputs = self.engine.run(self._inputs())
                return self.outputs[name].shape

            def execute_async_v3(self, stream: int) -> bool:
                outs = self.engine.run(self._inputs())
                for name, out in outs.items():
                    _host(self.addresses[name], out.nbytes)[:] = out.reshape(-1).view(np.uint8)
                return True

        self.Logger, self.BuilderFlag, self.Builder = Logger, BuilderFlag, Builder
        self.OnnxParser, self.Runtime, self.Refitter, self.Weights = (
            OnnxParser,
            Runtime,
            Refitter,
            Weights,
        )

    @staticmethod
    def nptype(dtype: str) -> type:
        return np.dtype(dtype).type
