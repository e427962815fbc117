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


PACKAGE = RUNTIME.parent
_SOURCES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names, line) of every import in `path`, at any depth, resolved to absolute
    module names inside hypercompile."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return [(m, n, line) for m, n, line in out if m.split(".")[0] == "hypercompile"]


def _known() -> dict[str, Path]:
    return {_module_name(p): p for p in _SOURCES}


def test_no_module_imports_another_modules_private_names():
    known = _known()
    bad = []
    for path in _SOURCES:
        for mod, names, line in _imports(path):
            for name in names:
                target = f"{mod}.{name}"
                private = name.startswith("_") and not name.startswith("__")
                if private and target not in known:  # a private submodule is a module, fine
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert bad == []


def test_the_package_has_no_import_cycle():
    """Module-level and lazy imports alike: `from a import b` depends on `a.b` when that is a
    module, else on `a`."""
    known = _known()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for path in _SOURCES:
        me = _module_name(path)
        for mod, names, _ in _imports(path):
            targets = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in known] or [mod]
            graph[me] |= {t for t in targets if t in known and t != me}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not (known[m].name == "__init__.py" and t.startswith(m))}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_functions_and_classes_stay_readable_in_size():
    """No function over 120 lines, no class over 500."""
    big = []
    for path in _SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                size = node.end_lineno - node.lineno + 1
                limit = 500 if isinstance(node, ast.ClassDef) else 120
                if size > limit:
                    big.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert big == []
