import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "models.py"


def ref(name: str) -> str:
    return f"{MODELS}:{name}"


# Bundles that several tests read are built once per session. Tests must not modify them: a
# test that changes a bundle (edits its manifest, profiles it, damages a file) works on its
# own copy (`shutil.copytree`).


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A 5-task bundle of TinyHyper, built once for the session (tests must not modify it)."""
    import hypercompile as hc

    return hc.build(ref("TinyHyper"), out=tmp_path_factory.mktemp("b") / "tiny")


@pytest.fixture(scope="session")
def router_bundle(tmp_path_factory) -> Path:
    """A DyNN program bundle (top-1 routing between three experts), built once for the session
    (tests must not modify it)."""
    from dyn_models import Router

    import hypercompile as hc

    return hc.build(Router(), out=tmp_path_factory.mktemp("r") / "router", parity_inputs=30)


@pytest.fixture
def tiny_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_tvm_bundle(tmp_path_factory) -> Path:
    """TinyHyper's 5 tasks on ONNX Runtime and TVM (llvm, this CPU), built once for the session
    (tests must not modify it)."""
    pytest.importorskip("tvm", reason="apache-tvm is an optional back end")
    import hypercompile as hc

    return hc.build(
        ref("TinyHyper"), out=tmp_path_factory.mktemp("t") / "b", backends=["onnxruntime", "tvm"]
    )


@pytest.fixture(scope="session")
def jetson_bundle(tmp_path_factory) -> Path:
    """TinyHyper's 5 tasks built for jetson-orin-nano through the command line, on the target's
    back ends that build here (TVM cross-compiled where nvcc and the aarch64 compiler are; ONNX
    graphs), once for the session (tests must not modify it)."""
    import subprocess

    out = tmp_path_factory.mktemp("j") / "jetson"
    cmd = [sys.executable, "-m", "hypercompile.cli", "build", ref("TinyHyper")]
    cmd += ["--target", "jetson-orin-nano", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return out


@pytest.fixture(scope="session")
def router_tvm(tmp_path_factory) -> Path:
    """The Router host program with TVM subgraphs, built once for the session (tests must not
    modify it)."""
    pytest.importorskip("tvm", reason="apache-tvm is an optional back end")
    from dyn_models import Router

    import hypercompile as hc

    out = tmp_path_factory.mktemp("r") / "r"
    return hc.build(Router(), out=out, backends=["tvm"], parity_inputs=30)


@pytest.fixture(scope="session")
def dyn_bundle(tmp_path_factory):
    """`dyn_bundle("EarlyExit")`: that model of dyn_models.py built on ONNX Runtime with 60
    random parity inputs, once for the session (tests must not modify it)."""
    import dyn_models

    import hypercompile as hc

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            out = tmp_path_factory.mktemp("dyn") / name
            built[name] = hc.build(getattr(dyn_models, name)(), out=out, parity_inputs=60)
        return built[name]

    return get


def manifest(path: Path) -> dict:
    """The manifest as raw JSON, for tests that read or edit the file as an attacker would."""
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path: Path, data: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(data))


sys.path.insert(0, str(ROOT / "tests"))
