"""Where an ONNX graph says its tensors' bytes live, read off the protobuf wire format without
the `onnx` package (the runtime does not carry it).

ONNX Runtime resolves an initializer's `external_data` location against the working directory
when a model is loaded from bytes, so a hostile graph could name `../../etc/passwd` and hand the
file back as an output. A bundle's graphs may only name hypercompile's weight stubs, which the
runtime binds itself; `external_locations` finds every location a graph names (initializers,
sparse initializers, attribute tensors, subgraphs and functions included), and
`weight_stubs` the dtype and shape of each stub, which the weights bound to it must have."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ...core.tensors import WEIGHT_STUB_LOCATION
from ...errors import BundleError

# ONNX field numbers of the messages on the way to a TensorProto (onnx.proto3)
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 1, 2, 8, 13
# TensorProto.DataType -> numpy, for the dtypes a weight file can hold
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64"}
_ONNX_DTYPES.update({9: "bool", 10: "float16", 11: "float64"})
_SCHEMA = {
    "model": _MODEL,
    "training": _TRAINING,
    "graph": _GRAPH,
    "function": _FUNCTION,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "sparse": _SPARSE,
}
_MAX_DEPTH = 64


class External(NamedTuple):
    """A tensor that takes its bytes from outside the graph: where, and its dtype and shape."""

    name: str
    location: str
    data_type: int
    dims: tuple[int, ...]


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _spans(data: memoryview):
    """(field number, wire type, value, the field as written) of one message; value: int or
    memoryview."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = 0, pos + 8
        elif wire == 5:
            value, pos = 0, pos + 4
        elif wire == 2:
            n, pos = _varint(data, pos)
            if pos + n > len(data):
                raise ValueError("length past the end")
            value, pos = data[pos : pos + n], pos + n
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield field, wire, value, data[start:pos]


def _fields(data: memoryview):
    """(field number, wire type, value) of one message; value: int or memoryview."""
    for field, wire, value, _ in _spans(data):
        yield field, wire, value


def _walk(kind: str, data: memoryview, out: list[External], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if kind == "tensor":
        name, locations, data_type, dims = "", [], 0, []
        for field, wire, value in _fields(data):
            if field == _TENSOR_NAME and wire == 2:
                name = bytes(value).decode("utf-8", "replace")
            elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
                entry = {f: bytes(v) for f, w, v in _fields(value) if w == 2}
                if entry.get(1, b"") == b"location":
                    locations.append(entry.get(2, b"").decode("utf-8", "replace"))
            elif field == _TENSOR_DATA_TYPE and wire == 0:
                data_type = value
            elif field == _TENSOR_DIMS and wire == 0:
                dims.append(value)
            elif field == _TENSOR_DIMS and wire == 2:  # packed
                pos = 0
                while pos < len(value):
                    d, pos = _varint(value, pos)
                    dims.append(d)
        out.extend(External(name, loc, data_type, tuple(dims)) for loc in locations)
        return
    children = _SCHEMA[kind]
    for field, wire, value in _fields(data):
        if wire == 2 and field in children:
            _walk(children[field], value, out, depth + 1)


def externals(model: bytes) -> list[External]:
    """Every tensor with `external_data` that the serialized ModelProto names."""
    out: list[External] = []
    try:
        _walk("model", memoryview(model), out, 0)
    except (ValueError, IndexError) as e:
        raise BundleError(f"an ONNX graph of the bundle is damaged ({e})") from None
    return out


@functools.lru_cache(maxsize=64)
def external_locations(model: bytes) -> frozenset[tuple[str, str]]:
    """(tensor name, location) of every `external_data` entry the serialized ModelProto names;
    remembered per graph (a generated variant's switch loads its graph again: ~1 ms a scan)."""
    return frozenset((e.name, e.location) for e in externals(model))


def weight_stubs(model: bytes) -> dict[str, tuple[np.dtype | None, tuple[int, ...]]]:
    """The numpy dtype (None: one no weight file holds) and shape of each weight stub."""
    out: dict[str, tuple[np.dtype | None, tuple[int, ...]]] = {}
    for e in externals(model):
        if e.location == WEIGHT_STUB_LOCATION:
            dtype = _ONNX_DTYPES.get(e.data_type)
            out[e.name] = (np.dtype(dtype) if dtype else None, e.dims)
    return out


_TENSOR_RAW_DATA, _TENSOR_DATA_LOCATION = 9, 14
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5


def _key(field: int, wire: int) -> bytes:
    return _encode_varint(field << 3 | wire)


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes_field(field: int, value: bytes | memoryview) -> bytes:
    return _key(field, 2) + _encode_varint(len(value)) + bytes(value)


def with_weights(model: bytes, weights: dict[str, np.ndarray]) -> bytes:
    """The serialized ModelProto with every weight stub of its graph holding `weights[name]`
    as raw data instead of pointing at the stub location: a self-contained graph for tools
    that read weights from the model (TensorRT's ONNX parser). Every stub must get a weight of
    its dtype and shape."""
    stubs = weight_stubs(model)
    missing = sorted(set(stubs) - set(weights))
    if missing:
        raise BundleError(f"no weight given for stub(s) {', '.join(missing[:5])}")
    for name, (dtype, dims) in stubs.items():
        arr = weights[name]
        if dtype is None or arr.dtype != dtype or tuple(arr.shape) != dims:
            raise BundleError(f"weight {name!r} does not match its stub's dtype and shape")

    def tensor(data: memoryview) -> bytes:
        name, is_stub = "", False
        for field, wire, value in _fields(data):
            if field == _TENSOR_NAME and wire == 2:
                name = bytes(value).decode("utf-8", "replace")
            elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
                entry = {f: bytes(v) for f, w, v in _fields(value) if w == 2}
                is_stub |= entry.get(2, b"").decode("utf-8", "replace") == WEIGHT_STUB_LOCATION
        if not is_stub:
            return bytes(data)
        kept = b"".join(
            bytes(raw)
            for field, _, _, raw in _spans(data)
            if field not in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _TENSOR_RAW_DATA)
        )
        arr = np.ascontiguousarray(weights[name]).astype(weights[name].dtype.newbyteorder("<"))
        return kept + _bytes_field(_TENSOR_RAW_DATA, arr.tobytes())

    def graph(data: memoryview) -> bytes:
        return b"".join(
            _bytes_field(f, tensor(value)) if f == _GRAPH_INITIALIZER and w == 2 else bytes(raw)
            for f, w, value, raw in _spans(data)
        )

    try:
        return b"".join(
            _bytes_field(field, graph(value)) if field == _MODEL_GRAPH and wire == 2 else bytes(raw)
            for field, wire, value, raw in _spans(memoryview(model))
        )
    except (ValueError, IndexError) as e:
        raise BundleError(f"an ONNX graph of the bundle is damaged ({e})") from None
