"""The TVM back end on the CPU (llvm): one compiled library per architecture, weights bound per
variant at load, the same host programs running TVM subgraphs; imported only when used."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ref
from dyn_models import Router
from models import TinyHyper

import hypercompile as hc

pytest.importorskip("tvm", reason="apache-tvm is an optional back end")


@pytest.fixture
def tvm_bundle(tiny_tvm_bundle):
    return tiny_tvm_bundle  # built once for the session (conftest)


def test_every_task_shares_one_compiled_library(tvm_bundle):
    m = json.loads((tvm_bundle / "manifest.json").read_text())
    assert sorted(p.name for p in (tvm_bundle / "tvm").iterdir()) == ["g0.so"]
    assert {v["artifacts"]["tvm"] for v in m["variants"]} == {"tvm/g0.so"}
    for v in m["variants"]:
        assert v["parity"]["tvm"]["max_rel"] <= 1e-4


def test_tvm_agrees_with_pytorch_for_every_variant(tvm_bundle):
    b, hm = hc.load(tvm_bundle), TinyHyper()
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    for cond in b.variants:
        want = hm.reference(cond, torch.from_numpy(x)).detach().numpy()
        got = b.run({"input": x}, backend="tvm", **cond)["output"]
        assert np.abs(got - want).max() <= 1e-4


def test_runtime_imports_tvm_only_when_asked(tvm_bundle):
    code = (
        "import sys, numpy as np, hypercompile as hc\n"
        f"b = hc.load({str(tvm_bundle)!r})\n"
        "b.run({'input': np.ones((1, 8), np.float32)}, task=1)\n"
        "first = 'tvm' in sys.modules\n"
        "b.run({'input': np.ones((1, 8), np.float32)}, task=1, backend='tvm')\n"
        "print('TVM', first, 'tvm' in sys.modules, 'torch' in sys.modules)\n"
        "build_side = ('hypercompile.compilers', 'hypercompile.builder', 'onnx')\n"
        "print('BUILD', sorted(m for m in sys.modules if m.split('.')[0] == 'onnx'\n"
        "    or any(m.startswith(p + '.') or m == p for p in build_side)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TVM False True False" in res.stdout
    assert "BUILD []" in res.stdout  # the run half of TVM needs none of its compile half


def test_dynamic_program_on_tvm(router_tvm):
    model = Router()
    b = hc.load(router_tvm)
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        x = torch.randn(1, 5, generator=gen)
        got = b.run({"x": x.numpy()}, backend="tvm")["output"]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(hc.BackendError, match="unknown back end 'tensorrtx'"):
        hc.build(ref("TinyHyper"), out=tmp_path / "b", backends=["tensorrtx"])


def test_manifest_records_the_host_cpu_tvm_compiled_for(tvm_bundle):
    m = json.loads((tvm_bundle / "manifest.json").read_text())
    tvm_target = m["target"]["tvm_target"]
    assert tvm_target["kind"] == "llvm" and tvm_target["mcpu"]


def test_artifacts_for_another_machine_are_refused_clearly(tvm_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tvm_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["target"]["name"], m["target"]["arch"] = "jetson-orin-nano", "aarch64"
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(
        hc.BackendError,
        match=r"built for jetson-orin-nano \(aarch64\); this machine is",
    ):
        hc.load(copy).run({"input": np.ones((1, 8), np.float32)}, task=0, backend="tvm")


def test_lstm_graphs_compile_on_tvm_unrolled(tmp_path):
    from dyn_models import LstmHead

    model = LstmHead()
    path = hc.build(model, out=tmp_path / "l", backends=["tvm", "onnxruntime"])
    m = json.loads((path / "manifest.json").read_text())
    assert m["variants"][0]["parity"]["tvm"]["max_rel"] <= 1e-4
    x = np.random.default_rng(1).standard_normal((2, 3, 6)).astype(np.float32)
    got = hc.load(path).run({"x": x}, backend="tvm")["output"]
    want = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - want).max() <= 1e-5
