"""The device fingerprint: what identifies this machine for timing purposes. A bundle's stored
profiles are keyed by it, and budget selection uses only the profile whose key matches."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ..core.targets import host_arch

_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "tvm": ("apache-tvm",)}


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _cpu_model() -> str:
    text = read_text("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def _tool(args: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a read-only query tool, or None when it is absent or fails."""
    if shutil.which(args[0]) is None:
        return None
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


def _jetson() -> dict[str, Any] | None:
    """Power mode (`nvpmodel -q`) and clock limits (`jetson_clocks --show`, current frequencies
    dropped: they move with load). Both tools are only queried, never used to change a clock."""
    mode = _tool(["nvpmodel", "-q"])
    clocks = _tool(["jetson_clocks", "--show"])
    if mode is None and clocks is None:
        return None
    info: dict[str, Any] = {}
    if mode:
        info["power_mode"] = " ".join(mode.split())
    if clocks:
        lines = []
        for line in clocks.splitlines():
            kept = []
            for tok in line.split():
                if tok.startswith("IdleStates"):
                    break
                if not tok.startswith("CurrentFreq="):
                    kept.append(tok)
            if kept:
                lines.append(" ".join(kept))
        info["clocks"] = lines
    return info


def backend_versions() -> dict[str, str]:
    """Installed back-end runtimes and their versions (package metadata: nothing is imported)."""
    out = {}
    for backend, dists in _PACKAGES.items():
        for dist in dists:
            try:
                out[backend] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


_LOCAL: dict[str, Any] = {}


def local_fingerprint() -> dict[str, Any]:
    """What identifies this machine for timing purposes: architecture, CPU model and core count,
    board (device tree), GPU names (`nvidia-smi`), Jetson power mode and clock limits, and the
    back-end versions. Computed once per process; the caller gets a copy."""
    if not _LOCAL:
        fp: dict[str, Any] = {
            "kind": "local",
            "arch": host_arch(),
            "cpu": _cpu_model(),
            "cores": os.cpu_count() or 0,
            "backends": backend_versions(),
        }
        board = (read_text("/proc/device-tree/model") or "").strip("\x00 \n")
        if board:
            fp["board"] = board
        gpus = _tool(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
        if gpus:
            fp["gpu"] = [g.strip() for g in gpus.splitlines() if g.strip()]
        jetson = _jetson()
        if jetson:
            fp["jetson"] = jetson
        _LOCAL.update(fp)
    return copy.deepcopy(_LOCAL)


def fingerprint_key(fp: dict[str, Any]) -> str:
    """A short stable key: the first 12 hex digits of the sha256 of the canonical JSON."""
    canonical = json.dumps(fp, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def describe(fp: dict[str, Any]) -> str:
    """One line for people: `AMD EPYC, 2 cores, x86_64, onnxruntime 1.32.0`."""
    parts = []
    if fp.get("kind") == "tvm-rpc":
        parts.append(f"TVM RPC key {fp.get('rpc_key')}")
    if fp.get("board"):
        parts.append(str(fp["board"]))
    parts.append(str(fp.get("cpu", "unknown CPU")))
    if fp.get("cores"):
        parts.append(f"{fp['cores']} cores")
    if fp.get("threads"):
        parts.append(f"{fp['threads']} TVM threads")
    parts.append(str(fp.get("arch", "?")))
    parts += list(fp.get("gpu", []))
    if (fp.get("jetson") or {}).get("power_mode"):
        parts.append(fp["jetson"]["power_mode"])
    parts += [f"{k} {v}" for k, v in sorted((fp.get("backends") or {}).items())]
    return ", ".join(parts)
