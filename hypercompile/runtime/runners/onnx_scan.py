"""Where an ONNX graph says its tensors' bytes live, read off the protobuf wire format without
the `onnx` package (the runtime does not carry it).

ONNX Runtime resolves an initializer's `external_data` location against the working directory
when a model is loaded from bytes, so a hostile graph could name `../../etc/passwd` and hand the
file back as an output. A bundle's graphs may only name hypercompile's weight stubs, which the
runtime binds itself; `external_locations` finds every location a graph names (initializers,
sparse initializers, attribute tensors, subgraphs and functions included)."""

from __future__ import annotations

from ...errors import BundleError

# ONNX field numbers of the messages on the way to a TensorProto (onnx.proto3)
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13
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


def _fields(data: memoryview):
    """(field number, wire type, value) of one message; value: int or memoryview."""
    pos = 0
    while pos < len(data):
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
        yield field, wire, value


def _walk(kind: str, data: memoryview, out: set[tuple[str, str]], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if kind == "tensor":
        name, locations = "", []
        for field, wire, value in _fields(data):
            if field == _TENSOR_NAME and wire == 2:
                name = bytes(value).decode("utf-8", "replace")
            elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
                entry = {f: bytes(v) for f, w, v in _fields(value) if w == 2}
                if entry.get(1, b"") == b"location":
                    locations.append(entry.get(2, b"").decode("utf-8", "replace"))
        out.update((name, loc) for loc in locations)
        return
    children = _SCHEMA[kind]
    for field, wire, value in _fields(data):
        if wire == 2 and field in children:
            _walk(children[field], value, out, depth + 1)


def external_locations(model: bytes) -> set[tuple[str, str]]:
    """(tensor name, location) of every `external_data` entry the serialized ModelProto names."""
    out: set[tuple[str, str]] = set()
    try:
        _walk("model", memoryview(model), out, 0)
    except (ValueError, IndexError) as e:
        raise BundleError(f"an ONNX graph of the bundle is damaged ({e})") from None
    return out
