import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "models.py"


def ref(name: str) -> str:
    return f"{MODELS}:{name}"


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
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle, dst)
    return dst


def manifest(path: Path) -> dict:
    """The manifest as raw JSON, for tests that read or edit the file as an attacker would."""
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path: Path, data: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(data))


sys.path.insert(0, str(ROOT / "tests"))
