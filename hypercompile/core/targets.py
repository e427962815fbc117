"""Device targets: TOML files that say which back ends, providers and compilers a device uses."""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TargetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TARGET = "x86-cpu"
KNOWN_BACKENDS = ("onnxruntime", "tvm", "tensorrt")


def host_arch() -> str:
    """This machine's architecture in target terms (`x86_64`, `aarch64`)."""
    arch = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


def targets_dir() -> Path:
    """Shipped targets: inside the wheel, or the repository's `targets/` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_targets"
    return packaged if packaged.is_dir() else here.parent / "targets"


@dataclass(frozen=True)
class Target:
    """A device description; see README "Targets" for the schema."""

    name: str
    arch: str
    description: str = ""
    backends: tuple[str, ...] = ("onnxruntime",)
    ort_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    ort_threads: int = 0  # 0: ONNX Runtime's default
    ort_shared_pool: bool = True  # DyNN programs: one process-wide thread pool
    tvm_tag: str = ""  # a TVM target tag (`nvidia/jetson-orin-nano`); tvm_target overrides keys
    tvm_target: dict[str, Any] = field(default_factory=dict)
    tvm_host: dict[str, Any] = field(default_factory=dict)
    cross_compiler: str = ""
    tensorrt_precision: str = "fp32"
    tensorrt_max_batch: int = 16  # the largest batch a TensorRT engine is built for
    memory_mb: int = 0
    # the CUDA release the device runs ("12.6" on JetPack 6): its GPU code is compiled with that
    # major's toolkit; "" follows the build machine's nvcc
    cuda: str = ""
    storage_mb: int = 0  # storage for the bundle's weights (0: not said); see build --storage
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["backends"] = list(self.backends)
        d["ort_providers"] = list(self.ort_providers)
        del d["source"]
        for key in ("storage_mb", "cuda"):  # bundles that do not use them stay readable by
            if not d[key]:  # older runtimes
                del d[key]
        return d


_FIELDS = {
    "name": str,
    "arch": str,
    "description": str,
    "backends": list,
    "ort_providers": list,
    "ort_threads": int,
    "ort_shared_pool": bool,
    "tvm_tag": str,
    "tvm_target": dict,
    "tvm_host": dict,
    "cross_compiler": str,
    "tensorrt_precision": str,
    "tensorrt_max_batch": int,
    "memory_mb": int,
    "cuda": str,
    "storage_mb": int,
}
_REQUIRED = ("name", "arch", "backends")


def parse_target(data: dict[str, Any], source: str) -> Target:
    """Validate a target table; every problem names the file and the key."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise TargetError(f"{source}: unknown key(s) {', '.join(unknown)}")
    for key in _REQUIRED:
        if key not in data:
            raise TargetError(f"{source}: missing required key {key!r}")
    for key, typ in _FIELDS.items():
        if key in data and not isinstance(data[key], typ):
            raise TargetError(f"{source}: {key!r} must be a {typ.__name__}")
    bad = [b for b in data["backends"] if b not in KNOWN_BACKENDS]
    if bad or not data["backends"]:
        raise TargetError(
            f"{source}: backends must be a non-empty list of {', '.join(KNOWN_BACKENDS)}"
            + (f" (got {', '.join(map(str, bad))})" if bad else "")
        )
    if isinstance(data.get("ort_threads"), bool) or not 0 <= data.get("ort_threads", 0) <= 1024:
        raise TargetError(f"{source}: 'ort_threads' must be between 0 (the default) and 1024")
    if data.get("tensorrt_precision", "fp32") not in ("fp32", "fp16", "int8"):
        raise TargetError(f"{source}: tensorrt_precision must be fp32, fp16 or int8")
    max_batch = data.get("tensorrt_max_batch", 16)
    if isinstance(max_batch, bool) or not 1 <= max_batch <= 1 << 20:
        raise TargetError(f"{source}: 'tensorrt_max_batch' must be a batch size >= 1")
    if data.get("cuda") and not re.fullmatch(r"\d+\.\d+", data["cuda"]):
        raise TargetError(f"{source}: 'cuda' must be a CUDA release such as \"12.6\"")
    kw = dict(data)
    kw["backends"] = tuple(data["backends"])
    kw["ort_providers"] = tuple(data.get("ort_providers", ("CPUExecutionProvider",)))
    return Target(source=source, **kw)


def load_target(name_or_path: str | Path | Target | None = None) -> Target:
    """A shipped target by name (`x86-cpu`) or a user's TOML file by path."""
    if isinstance(name_or_path, Target):
        return name_or_path
    ref = str(name_or_path or DEFAULT_TARGET)
    path = Path(ref)
    if not (ref.endswith(".toml") or path.is_file()):
        path = targets_dir() / f"{ref}.toml"
        if not path.is_file():
            known = ", ".join(t.name for t in list_targets())
            raise TargetError(f"unknown target {ref!r} (known: {known}; or pass a .toml path)")
    if not path.is_file():
        raise TargetError(f"target file {ref} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetError(f"{path}: invalid TOML: {e}") from None
    return parse_target(data, str(path))


def list_targets() -> list[Target]:
    return [load_target(p) for p in sorted(targets_dir().glob("*.toml"))]
