"""Exporting TVM libraries for a device: host code linked by the target's (cross) compiler, GPU
kernels compiled ahead of time and embedded in the library.

TVM 0.27 keeps CUDA kernels as source in the library and compiles them when the library is
loaded, which needs a CUDA compiler and TVM's Python on the device. hypercompile compiles them
here instead, so the device only needs TVM's runtime and a driver. Every CUDA module in the
library's import blob gets, in place of its source:

- for a target that names its CUDA release (`cuda = "12.6"`, JetPack 6), a cubin for its `sm_XX`
  from NVRTC of that major (the `nvidia-cuda-nvrtc-cu12` wheel and its headers: the `jetson`
  extra). A toolkit of another major writes another ELF ABI, which the device's driver may not
  load (CUDA 13 images need a 580+ driver; JetPack 6 has CUDA 12);
- otherwise a fatbin (SASS for `sm_XX` plus its PTX) from the build machine's nvcc.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ...core.targets import host_arch
from ...errors import BuildError

NVCC_ENV = "HYPERCOMPILE_NVCC"
FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)


def find_nvcc() -> str | None:
    """$HYPERCOMPILE_NVCC, then $CUDA_HOME / $CUDA_PATH, then PATH, then /usr/local/cuda*."""
    if os.environ.get(NVCC_ENV):
        return os.environ[NVCC_ENV]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.isfile(os.path.join(os.environ[var], "bin", "nvcc")):
            return os.path.join(os.environ[var], "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return candidates[0] if candidates else None


def nvcc_info(nvcc: str) -> tuple[str, list[str]]:
    """(CUDA release, e.g. "13.0", and the `sm_XX` it can target)."""
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True)
        archs = subprocess.run(
            [nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"nvcc at {nvcc} does not run: {e}".splitlines()[0]) from None
    m = re.search(r"release (\d+\.\d+)", version.stdout)
    sms = [a.replace("compute_", "sm_") for a in archs.stdout.split()]
    return (m.group(1) if m else "unknown"), sms


def nvrtc_release() -> str | None:
    """The release of the NVRTC that `cuda-bindings` loads ("12.6"), or None without one."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return None
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception:  # noqa: BLE001 - no libnvrtc to load
        return None
    return f"{major}.{minor}" if err == nvrtc.nvrtcResult.NVRTC_SUCCESS else None


def _wheel_cuda_root() -> str | None:
    """A CUDA root (an `include` folder) made of the headers of the `nvidia-cuda-runtime-cu12`
    and `nvidia-cuda-cccl-cu12` wheels, for NVRTC; None when they are not installed."""
    try:
        import nvidia
    except ImportError:
        return None
    bases = [Path(p) for p in nvidia.__path__]
    parts = [b / sub / "include" for b in bases for sub in ("cuda_runtime", "cuda_cccl")]
    parts = [p for p in parts if p.is_dir()]
    if not any((p / "cuda_runtime.h").is_file() for p in parts):
        return None
    root = Path(tempfile.gettempdir()) / f"hc-cuda-headers-{os.getuid()}"
    include = root / "include"
    include.mkdir(parents=True, exist_ok=True)
    for part in parts:
        for entry in part.iterdir():
            link = include / entry.name
            if not link.exists():
                try:
                    link.symlink_to(entry)
                except FileExistsError:
                    pass
    return str(root)


def compile_cubin(source: str, sm: str, release: str) -> tuple[bytes, str]:
    """CUDA source -> cubin for `sm` with NVRTC of CUDA `release`'s major; (bytes, toolkit)."""
    have = nvrtc_release()
    if have is None or have.split(".")[0] != release.split(".")[0]:
        raise BuildError(cuda_toolkit_missing(release) or "NVRTC is not usable")
    root = _wheel_cuda_root()
    if root is None:
        raise BuildError(cuda_toolkit_missing(release) or "CUDA headers are missing")
    from tvm.support import nvcc

    old = os.environ.get("CUDA_PATH")
    os.environ["CUDA_PATH"] = root
    try:
        cubin = bytes(nvcc.compile_cuda(source, target_format="cubin", arch=sm, compiler="nvrtc"))
    except Exception as e:  # noqa: BLE001 - NVRTC's log, first line
        raise BuildError(f"NVRTC {have} failed on TVM's CUDA kernels: {_first(e)}") from None
    finally:
        if old is None:
            os.environ.pop("CUDA_PATH", None)
        else:
            os.environ["CUDA_PATH"] = old
    return cubin, f"nvrtc {have}"


def cuda_toolkit_missing(release: str) -> str | None:
    """What this machine lacks to compile GPU code for a device with CUDA `release`."""
    major = release.split(".")[0]
    have = nvrtc_release()
    wheels = (
        f"pip install 'nvidia-cuda-nvrtc-cu{major}' 'nvidia-cuda-runtime-cu{major}' "
        f"'nvidia-cuda-cccl-cu{major}' 'cuda-bindings>={major},<{int(major) + 1}' "
        "(the `jetson` extra)"
    )
    if have is None:
        return f"the target runs CUDA {release}: NVRTC {major}.x is needed: {wheels}"
    if have.split(".")[0] != major:
        return f"the target runs CUDA {release}, but the NVRTC here is {have}: {wheels}"
    if _wheel_cuda_root() is None:
        return f"the target runs CUDA {release}: CUDA headers are needed: {wheels}"
    return None


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def cuda_elf_abi(image: bytes) -> tuple[int, int] | None:
    """(ELF OSABI, ABI version) of a CUDA ELF image: (51, 7) for CUDA 12, (65, 8) for CUDA 13."""
    if image[:4] != b"\x7fELF" or len(image) < 20 or elf_machine(image) != "cuda":
        return None
    return image[7], image[8]


def cuda_images(data: bytes) -> list[tuple[int, int]]:
    """(OSABI, ABI version) of every CUDA ELF image embedded in a library's bytes."""
    found = []
    at = data.find(b"\x7fELF", 1)
    while at != -1:
        abi = cuda_elf_abi(data[at : at + 64])
        if abi:
            found.append(abi)
        at = data.find(b"\x7fELF", at + 1)
    return found


def compile_fatbin(source: str, sm: str) -> tuple[bytes, str]:
    """CUDA source -> fatbin with SASS for `sm` and its PTX (for newer GPUs); (bytes, release)."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError(f"no nvcc found: put it on PATH or set {NVCC_ENV}")
    release, sms = nvcc_info(nvcc)
    if sm not in sms:
        raise BuildError(
            f"nvcc {release} ({nvcc}) cannot compile for {sm} (it targets {sms[0]}..{sms[-1]}); "
            f"set {NVCC_ENV} to a CUDA toolkit that supports {sm}"
        )
    num = sm.removeprefix("sm_")
    with tempfile.TemporaryDirectory(prefix="hc-nvcc-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        src.write_text(source)
        cmd = [nvcc, "--fatbin", "-O3", "-o", str(out), str(src)]
        cmd += ["-gencode", f"arch=compute_{num},code=[sm_{num},compute_{num}]"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise BuildError(f"nvcc failed on TVM's CUDA kernels: {last[-1] if last else '?'}")
        return out.read_bytes(), release


# -- the library's import blob ------------------------------------------------------------------
# TVM serializes a library's imported modules (CUDA kernels, ...) into one byte string:
#   u64 size | u64[] import-tree row pointers | u64[] child indices |
#   per module: str kind, then (unless kind == "_lib") u64 length + the module's own bytes.
# A CUDA module's own bytes end with its code: str format, <function table>, str data.
# Strings and arrays are u64-length-prefixed, little endian.


class _Reader:
    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def u64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise BuildError("TVM's library blob ended early (unknown layout)")
        (v,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return v

    def raw(self) -> bytes:
        n = self.u64()
        if self.pos + n > len(self.data):
            raise BuildError("TVM's library blob has a length past its end (unknown layout)")
        self.pos += n
        return self.data[self.pos - n : self.pos]


def _blob(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def patch_cuda_modules(
    blob: bytes, sources: list[str], compiled: list[bytes], image_format: bytes = b"fatbin"
) -> bytes:
    """Replace each CUDA module's source (in order) with its compiled image (a fatbin or a
    cubin: `image_format`)."""
    r = _Reader(blob)
    size = r.u64()
    if size != len(blob) - 8:
        raise BuildError("TVM's library blob has an unexpected size field (unknown layout)")
    rows = [r.u64() for _ in range(r.u64())]
    children = [r.u64() for _ in range(r.u64())]
    out = [struct.pack("<Q", len(rows)), *(struct.pack("<Q", v) for v in rows)]
    out += [struct.pack("<Q", len(children)), *(struct.pack("<Q", v) for v in children)]
    k = 0
    for _ in range(max(len(rows) - 1, 0)):
        kind = r.raw()
        out.append(_blob(kind))
        if kind == b"_lib":
            continue
        body = r.raw()
        if kind == b"cuda":
            if k >= len(sources):
                raise BuildError("TVM's library has more CUDA modules than expected")
            code = sources[k].encode()
            fmt_ = _Reader(body).raw()
            tail = _blob(code)
            if fmt_ != b"cuda" or not body.endswith(tail):
                raise BuildError("TVM's CUDA module does not hold its source last (unknown layout)")
            head = body[: len(body) - len(tail)]
            table = head[8 + len(fmt_) :]
            body = _blob(image_format) + table + _blob(compiled[k])
            k += 1
        out.append(_blob(body))
    if r.pos != len(blob) or k != len(sources):
        raise BuildError("TVM's library blob has trailing or missing modules (unknown layout)")
    data = b"".join(out)
    return struct.pack("<Q", len(data)) + data


def _c_array(blob: bytes) -> str:
    """The blob as the C source TVM's loader looks for (`__tvm_ffi__library_bin`)."""
    hexed = blob.hex()
    lines = [
        ",".join("0x" + hexed[i : i + 2] for i in range(j, min(j + 64, len(hexed)), 2))
        for j in range(0, len(hexed), 64)
    ]
    body = ",\n".join(lines)
    return (
        '#ifdef __cplusplus\nextern "C" {\n#endif\n'
        "extern const unsigned char __tvm_ffi__library_bin[];\n"
        '__attribute__((visibility("default")))\n'
        f"const unsigned char __tvm_ffi__library_bin[{len(blob)}] = {{\n{body}\n}};\n"
        "#ifdef __cplusplus\n}\n#endif\n"
    )


def _cuda_modules(mod: Any) -> list[Any]:
    found, stack = [], list(mod.imports)
    while stack:
        m = stack.pop(0)
        if m.kind == "cuda":
            found.append(m)
        stack.extend(m.imports)
    return found


def _cross_compiler(target: Any) -> str | None:
    """The compiler that links host code for another CPU, or None for this machine's."""
    if target.arch == host_arch():
        return None
    return target.cross_compiler or f"{target.arch}-linux-gnu-g++"


def cuda_release(target: Any) -> str:
    """The CUDA release a CUDA target's GPU code is for: its own `cuda`, else the build
    machine's nvcc's ("" without one)."""
    if getattr(target, "cuda", ""):
        return target.cuda
    nvcc = find_nvcc()
    return nvcc_info(nvcc)[0] if nvcc else ""


def _nvcc_fits(target: Any) -> bool:
    """Whether the build machine's nvcc compiles `target`'s GPU code: the target names no CUDA
    release, or nvcc is of its major (else NVRTC of that major does)."""
    if not getattr(target, "cuda", ""):
        return True
    nvcc = find_nvcc()
    return bool(nvcc) and nvcc_info(nvcc)[0].split(".")[0] == target.cuda.split(".")[0]


def toolchain_missing(target: Any) -> str | None:
    """What this machine lacks to build TVM libraries for `target`, with how to get it."""
    compiler = _cross_compiler(target)
    if compiler and shutil.which(compiler) is None:
        return (
            f"cross compiler {compiler} not found: on Debian/Ubuntu install it with "
            f"`apt-get install g++-{target.arch.replace('_', '-')}-linux-gnu`"
        )
    kind = (getattr(target, "tvm_target", None) or {}).get("kind")
    if kind == "cuda" and not _nvcc_fits(target):
        return cuda_toolkit_missing(target.cuda)
    if kind == "cuda" and find_nvcc() is None:
        return (
            "the target has a CUDA GPU but no nvcc was found: install the CUDA toolkit and put "
            f"nvcc on PATH, or set {NVCC_ENV}"
        )
    return None


def export(executable: Any, out: Path, target: Any) -> dict[str, Any]:
    """Write the library for `target` to `out`; return what the manifest should say about it
    (host triple, device code, nvcc release)."""
    import tvm_ffi
    from tvm.support import cc

    info: dict[str, Any] = {"arch": target.arch}
    fcompile = None
    missing = toolchain_missing(target)
    if missing:
        raise BuildError(missing)
    compiler = _cross_compiler(target)
    if compiler:
        fcompile = cc.cross_compiler(compiler)
        info["cross_compiler"] = compiler
    host = executable.mod
    cuda = _cuda_modules(host)
    fpack = None
    if cuda:
        sm = str(resolve_sm(target))
        sources = [m.inspect_source("cuda") for m in cuda]
        nvrtc = not _nvcc_fits(target)
        if nvrtc:
            built = [compile_cubin(s, sm, target.cuda) for s in sources]
            abi = cuda_elf_abi(built[0][0])
            info.update(device_code="cubin", sm=sm, toolkit=built[0][1], cuda=target.cuda)
            info["elf_abi"] = list(abi) if abi else None
        else:
            built = [compile_fatbin(s, sm) for s in sources]
            info.update(device_code="fatbin", sm=sm, nvcc=built[0][1], cuda=built[0][1])
        image_format = b"cubin" if nvrtc else b"fatbin"

        def fpack(mod: Any, is_system_lib: bool, prefix: str, workspace: str) -> str:
            if is_system_lib or prefix:
                raise BuildError("system-library TVM builds are not supported")
            pack = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")
            blob = bytes(pack(mod).numpy().tobytes())
            patched = patch_cuda_modules(blob, sources, [b for b, _ in built], image_format)
            path = os.path.join(workspace, "devc.c")
            Path(path).write_text(_c_array(patched))
            return path

    kwargs: dict[str, Any] = {}
    if fcompile is not None:
        kwargs["fcompile"] = fcompile
    if fpack is not None:
        kwargs["fpack_imports"] = fpack
    host.export_library(str(out), **kwargs)
    return info


def resolve_sm(target: Any) -> str:
    spec = getattr(target, "tvm_target", None) or {}
    sm = spec.get("arch", "")
    if not re.fullmatch(r"sm_\d+[a-z]?", str(sm)):
        raise BuildError(f"target {target.name}: a CUDA tvm_target needs arch = 'sm_XX'")
    return str(sm)


def elf_machine(data: bytes) -> str | None:
    """The ELF file's machine (`x86_64`, `aarch64`, ...), or None when it is not ELF."""
    if data[:4] != b"\x7fELF" or len(data) < 20:
        return None
    order = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(order + "H", data, 18)
    return {62: "x86_64", 183: "aarch64", 40: "arm", 3: "x86", 190: "cuda"}.get(
        machine, str(machine)
    )
