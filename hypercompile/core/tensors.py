"""Bundle files other than the manifest: tensor files, hashes, and paths kept inside the bundle.

Tensor files use the safetensors layout (8-byte little-endian header length, a JSON header
of name -> dtype/shape/offsets, then raw little-endian bytes), read and written with numpy
alone: tensors only, never a pickle. Weights are stored by content: a tensor's id is the
sha256 of its dtype, shape and bytes (`tensor_id`), and `TensorStore` keeps each id once.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import BundleError

MAX_HEADER_BYTES = 16 << 20
TENSOR_ID_HEX = 32  # a tensor id: the first 128 bits of its sha256, in hex

# Marks an ONNX initializer whose value is bound per variant at load time.
WEIGHT_STUB_LOCATION = "hypercompile:variant-weights"

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def read_regular(path: Path, size: int | None = None) -> bytes:
    """The bytes of `path`, which must be a regular file (a FIFO or device would block or never
    end) of `size` bytes when the manifest records it (a sparse file claiming gigabytes is
    refused before it is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path} is not a regular file")
        if size is not None and st.st_size != size:
            raise BundleError(f"{path} has {st.st_size} bytes, the manifest says {size}")
        return f.read()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _little(name: str, arr: Any) -> np.ndarray:
    """`arr` as a C-contiguous little-endian array of a storable dtype."""
    arr = np.asarray(arr)
    if arr.dtype.newbyteorder("=") not in _CODES:
        raise BundleError(f"tensor {name!r}: dtype {arr.dtype} cannot be stored")
    return np.require(arr.astype(arr.dtype.newbyteorder("<"), copy=False), requirements="C")


def tensor_id(arr: np.ndarray) -> str:
    """The content address of a tensor: sha256 of its dtype code, shape and little-endian
    bytes, cut to TENSOR_ID_HEX hex digits. Equal ids mean equal tensors."""
    arr = _little("tensor", arr)
    h = hashlib.sha256(f"{_CODES[arr.dtype]}{list(arr.shape)}\n".encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()[:TENSOR_ID_HEX]


def is_tensor_id(key: Any) -> bool:
    return (
        isinstance(key, str)
        and len(key) == TENSOR_ID_HEX
        and all(c in "0123456789abcdef" for c in key)
    )


class TensorStore:
    """Writes a bundle's weights by content: `add` returns a tensor's id and keeps its bytes
    only the first time; `flush` writes the tensors added since the last flush to one file."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}  # tensor id -> the file that holds it
        self.nbytes = 0  # unique weight bytes
        self._new: dict[str, np.ndarray] = {}

    def add(self, arr: Any) -> str:
        tid = tensor_id(arr)
        if tid not in self.files and tid not in self._new:
            self._new[tid] = _little(tid, arr)
            self.nbytes += self._new[tid].nbytes
        return tid

    def flush(self, root: Path, rel: str) -> None:
        """Write the new tensors to `root/rel` (nothing when there are none)."""
        if self._new:
            write_tensors(root / rel, self._new)
            self.files.update(dict.fromkeys(self._new, rel))
            self._new = {}


def write_tensors(path: Path, tensors: dict[str, np.ndarray]) -> int:
    """Write `tensors` in safetensors layout; returns the file size in bytes."""
    header: dict[str, Any] = {}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = _little(name, arr)
        header[name] = {
            "dtype": _CODES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays:
            f.write(arr.tobytes())
    return 8 + len(raw) + offset


def read_tensors(data: bytes, what: str = "weight file") -> dict[str, np.ndarray]:
    """Parse safetensors bytes into read-only numpy views of `data`."""
    try:
        if len(data) < 8:
            raise ValueError("file too short")
        (n,) = struct.unpack("<Q", data[:8])
        if n > min(MAX_HEADER_BYTES, len(data) - 8):
            raise ValueError("header length out of range")
        header = json.loads(data[8 : 8 + n], object_pairs_hook=unique_keys)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        base = 8 + n
        out = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = np.dtype(_DTYPES[spec["dtype"]]).newbyteorder("<")
            shape = tuple(int(d) for d in spec["shape"])
            start, end = (int(o) for o in spec["data_offsets"])
            count = int(np.prod(shape, dtype=np.int64))
            if start < 0 or end != start + count * dtype.itemsize or base + end > len(data):
                raise ValueError(f"tensor {name!r} lies outside the file")
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=base + start)
            out[name] = arr.reshape(shape)
        return out
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise BundleError(f"{what} is damaged: {e}") from None


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object hook that refuses a key given twice (json keeps the last one silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"key {dup!r} appears twice")
    return out


def safe_path(root: Path, rel: str) -> Path:
    """Resolve a manifest path inside `root`, refusing anything that leaves it."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"bundle manifest has an invalid path {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or "\\" in rel or ".." in p.parts or rel.startswith("~"):
        raise BundleError(f"bundle manifest path {rel!r} leaves the bundle directory")
    full = (root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise BundleError(f"bundle manifest path {rel!r} leaves the bundle directory")
    return full
