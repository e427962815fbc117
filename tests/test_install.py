"""`pip install hypercompile` without extras is the runtime: numpy, onnxruntime, click, rich.
Its CLI runs, inspects and profiles a bundle built elsewhere. Checked here cheaply, in a process
where torch, onnx, onnxscript, TVM and matplotlib cannot be imported (as in a fresh venv with
no extras; a real one is in the report of issue 15), and by the package's declared
dependencies."""

import shutil
import subprocess
import sys

import numpy as np
from conftest import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

HIDDEN = ("torch", "onnx", "onnxscript", "tvm", "matplotlib")

_HIDE = f"""
import importlib.abc, sys
tried = []
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in {HIDDEN!r}:
            tried.append(name.partition(".")[0])
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
import atexit
atexit.register(lambda: print("TRIED", sorted(set(tried)), file=sys.stderr))
"""


def runtime_only(body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _HIDE + body], capture_output=True, text=True, timeout=300
    )


def cli(*args) -> subprocess.CompletedProcess:
    argv = ["hypercompile", *map(str, args)]
    return runtime_only(
        f"import sys\nsys.argv = {argv!r}\nfrom hypercompile.cli import main\nmain()\n"
    )


def test_the_package_without_extras_is_the_runtime():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split(";")[0].strip() for d in project["dependencies"]}
    assert names == {"numpy", "onnxruntime", "click", "rich", "tomli"}
    extras = project["optional-dependencies"]
    assert {"build", "tvm", "jetson", "dev"} <= set(extras)
    assert any(d.startswith("onnx") for d in extras["build"])
    assert any(d.startswith("apache-tvm") for d in extras["tvm"])


def test_import_hypercompile_imports_no_build_package():
    res = runtime_only("import hypercompile as hc\nprint(hc.__version__)\n")
    assert res.returncode == 0, res.stderr
    assert "TRIED []" in res.stderr


def test_run_inspect_and_profile_work_without_torch_onnx_or_tvm(tiny_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(tiny_bundle, path)
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    res = cli("run", path, "--input", f"input={tmp_path / 'x.npy'}", "--cond", "task=3", "--json")
    assert res.returncode == 0 and '"shape": [1, 4]' in res.stdout, res.stderr
    assert "TRIED []" in res.stderr
    res = cli("inspect", path)
    assert res.returncode == 0 and "task=3" in res.stdout, res.stderr
    assert "TRIED []" in res.stderr
    res = cli("profile", path, "--warmup", 1, "--repeat", 10)
    assert res.returncode == 0 and "stored in bundle" in res.stdout, res.stderr
    assert "TRIED ['onnx']" in res.stderr  # FLOP counting only, which says "-" without it
    res = cli(
        "run",
        path,
        "--input",
        f"input={tmp_path / 'x.npy'}",
        "--budget-ms",
        1e6,
        "--cond",
        "task=1",
    )
    assert res.returncode == 0 and "selected task=1" in res.stdout, res.stderr


def test_building_without_torch_names_the_build_extra(tmp_path):
    res = cli("build", f"{ROOT}/tests/models.py:TinyHyper", "--out", tmp_path / "b")
    assert res.returncode == 1
    assert "hypercompile[build]" in res.stderr and "torch" in res.stderr
    assert not (tmp_path / "b").exists()


def test_a_plot_without_matplotlib_says_what_to_install(tiny_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(tiny_bundle, path)
    res = cli("profile", path, "--warmup", 1, "--repeat", 10, "--plot", tmp_path / "p.png")
    assert res.returncode == 1 and "matplotlib" in res.stderr, res.stderr
