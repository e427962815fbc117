"""The runtime is a layer of its own: loading and running a bundle imports neither the build
machine's half of hypercompile (builder, front end, compilers, devtools, CLI) nor torch or onnx,
and the runtime's sources import none of them."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "hypercompile" / "runtime"
FORBIDDEN = (
    "hypercompile.builder",
    "hypercompile.frontend",
    "hypercompile.compilers",
    "hypercompile.devtools",
    "hypercompile.cli",
    "torch",
    "onnx",
)

_CHECK = (
    "import sys\n"
    "bad = sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {0!r}))\n"
    "print('LOADED', bad)\n"
)


def _run_fresh(body: str) -> str:
    code = body + _CHECK.format(FORBIDDEN)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_load_and_run_a_static_bundle_stays_in_the_runtime(tiny_bundle):
    out = _run_fresh(
        "import numpy as np, hypercompile as hc\n"
        f"b = hc.load({str(tiny_bundle)!r})\n"
        "x = np.ones((2, 8), np.float32)\n"
        "for t in range(5):\n"
        "    assert b.run({'input': x}, task=t)['output'].shape == (2, 4)\n"
    )
    assert "LOADED []" in out


def test_load_and_run_a_program_bundle_stays_in_the_runtime(router_bundle):
    out = _run_fresh(
        "import numpy as np, hypercompile as hc\n"
        f"b = hc.load({str(router_bundle)!r})\n"
        "for s in range(8):\n"
        "    x = np.random.default_rng(s).standard_normal((1, 5)).astype(np.float32)\n"
        "    assert b.run({'x': x})['output'].shape == (1, 5)\n"
    )
    assert "LOADED []" in out


def _imported(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    parts = ["hypercompile", *path.relative_to(RUNTIME.parent).with_suffix("").parts]
    package = parts[:-1]  # the package a relative import starts from (`__init__`: its own)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("path", sorted(RUNTIME.rglob("*.py")), ids=lambda p: p.name)
def test_runtime_sources_import_nothing_from_the_build_side(path):
    bad = sorted(
        n for n in _imported(path) if any(n == p or n.startswith(p + ".") for p in FORBIDDEN)
    )
    assert bad == [], f"{path.relative_to(RUNTIME.parent)} imports {bad}"
