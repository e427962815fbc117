"""The TensorRT back end. TensorRT itself is not installed here: the build side (offline parser
checks, recipes) runs for real, and the device side (engine cache, refit mapping, checks before
any answer) runs against `trt_double.FakeTensorRT`, a test double answered by ONNX Runtime.
Tests that need real TensorRT carry the `tensorrt` marker."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import manifest, ref
from models import TinyHyper
from onnx import TensorProto, helper
from trt_double import FakeDevice, FakeTensorRT

import hypercompile as hc
from hypercompile.cli import main
from hypercompile.compilers.tensorrt import support
from hypercompile.compilers.tensorrt.compile import COMPILER
from hypercompile.core.targets import host_arch, load_target
from hypercompile.errors import BackendError, BuildError, ParityError
from hypercompile.runtime import prepare
from hypercompile.runtime.runners import Binding
from hypercompile.runtime.runners import tensorrt as trt_runner
from hypercompile.runtime.runners.onnx_scan import with_weights
from hypercompile.runtime.runners.onnxruntime import provider_options

WEIGHTS = ["0.weight", "0.bias", "2.weight", "2.bias"]
X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def _target(tmp: Path, precision: str = "fp16", arch: str | None = None) -> Path:
    """A target of this machine's architecture (so the double's engines can run here) whose
    back ends are ONNX Runtime and TensorRT."""
    path = tmp / f"gpu-{precision}.toml"
    path.write_text(
        f'name = "gpu-box"\narch = "{arch or host_arch()}"\n'
        'backends = ["onnxruntime", "tensorrt"]\n'
        f'tensorrt_precision = "{precision}"\ntensorrt_max_batch = 8\n'
    )
    return path


@pytest.fixture(scope="module")
def jetson_trt(tmp_path_factory) -> Path:
    """TinyHyper's 5 tasks built with `--target jetson-orin-nano --backend tensorrt` through
    the command line (tests must not modify it)."""
    out = tmp_path_factory.mktemp("jt") / "b"
    args = ["build", ref("TinyHyper"), "--target", "jetson-orin-nano", "--backend", "tensorrt"]
    res = CliRunner().invoke(main, [*args, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def local_trt(tmp_path_factory) -> Path:
    """TinyHyper for a local fp16 TensorRT target, built where TensorRT is absent: TensorRT's
    parity deferred, its checks stored (tests must not modify it)."""
    tmp = tmp_path_factory.mktemp("lt")
    return hc.build(
        ref("TinyHyper"), target=_target(tmp), out=tmp / "b", backends=["onnxruntime", "tensorrt"]
    )


@pytest.fixture
def fake(monkeypatch, tmp_path) -> FakeTensorRT:
    """The test double in place of TensorRT and CUDA memory, for this test only (and the
    default engine cache in a temporary folder)."""
    double = FakeTensorRT()
    monkeypatch.setattr(trt_runner, "_trt", lambda: double)
    monkeypatch.setattr(trt_runner, "_device", FakeDevice)
    monkeypatch.setattr(trt_runner, "_gpu_missing", lambda: None)
    monkeypatch.setattr(trt_runner, "default_cache", lambda: tmp_path / "default-cache")
    return double


def _recipe(bundle: Path, gid: str) -> dict:
    return json.loads((bundle / "tensorrt" / f"{gid}.json").read_text())


# -- build: recipes, offline checks --------------------------------------------------------------
def test_jetson_build_records_recipes(jetson_trt):
    m = manifest(jetson_trt)
    assert m["target"]["name"] == "jetson-orin-nano"
    g = m["graphs"]["g0"]
    assert g["artifacts"]["tensorrt"] == "tensorrt/g0.json"
    recipe = _recipe(jetson_trt, "g0")
    assert recipe["format"] == "hypercompile-tensorrt-recipe/1"
    assert recipe["precision"] == "fp16" and recipe["check_rtol"] == 1e-2
    assert recipe["profile"] == {"input": {"min": [1, 8], "opt": [1, 8], "max": [16, 8]}}
    assert recipe["refit"] == WEIGHTS and recipe["built_in"] == {}  # every weight varies
    graph_bytes = (jetson_trt / g["path"]).read_bytes()
    assert recipe["graph_sha256"] == hc.core.tensors.sha256_bytes(graph_bytes)
    assert recipe["tensorrt"] == ">=10.0,<11" and recipe["opset"] == 18
    assert g["artifact_info"]["tensorrt"]["precision"] == "fp16"
    assert "tensorrt/g0.json" in m["files"]
    for v in m["variants"]:
        assert v["artifacts"] == {"tensorrt": "tensorrt/g0.json"}
        assert v["parity"]["tensorrt"]["deferred"].startswith("runs on the device")
        assert v["checks"] in m["files"]  # the PyTorch answers the device checks against


def test_jetson_bundle_refuses_tensorrt_here_in_one_line(jetson_trt):
    b = hc.load(jetson_trt)
    with pytest.raises(BackendError, match="TensorRT is not installed here") as e:
        b.run({"input": X}, task=1, backend="tensorrt")
    assert "\n" not in str(e.value)
    res = CliRunner().invoke(main, ["inspect", str(jetson_trt)])
    assert res.exit_code == 0 and "TensorRT recipes" in res.output


class SharedHead(TinyHyper):
    """TinyHyper whose output layer is the same in every task: only the first layer varies."""

    def generate(self, cond):
        out = super().generate(cond)
        first = super().generate({"task": 0})
        out["2.weight"], out["2.bias"] = first["2.weight"], first["2.bias"]
        return out


def test_refittable_weights_are_those_that_vary(tmp_path):
    out = hc.build(
        SharedHead(), target="jetson-orin-nano", out=tmp_path / "b", backends=["tensorrt"]
    )
    recipe, m = _recipe(out, "g0"), manifest(out)
    assert recipe["refit"] == ["0.weight", "0.bias"]
    shared = {n: m["variants"][0]["weights"][n] for n in ("2.weight", "2.bias")}
    assert recipe["built_in"] == shared
    assert all(v["weights"][n] == t for v in m["variants"] for n, t in shared.items())


def test_dynamic_program_gets_a_recipe_per_block_graph(tmp_path):
    from dyn_models import Router

    out = hc.build(
        Router(),
        target="jetson-orin-nano",
        out=tmp_path / "r",
        backends=["tensorrt"],
        parity_inputs=20,
    )
    m = manifest(out)
    (v,) = m["variants"]
    assert v["program"] and len(v["artifacts"]["tensorrt"]) == len(m["graphs"]) >= 2
    for gid, g in m["graphs"].items():
        recipe = _recipe(out, gid)
        assert recipe["refit"] == []  # one variant: nothing varies, every weight built in
        assert recipe["built_in"] == {n: v["weights"][n] for n in g["weights"]}
        for name, p in recipe["profile"].items():
            assert p["min"][0] == 1 and p["max"][0] == 16 or p["min"] == p["max"], (name, p)


def _model(op: str, dtype: int = TensorProto.FLOAT, opset: int = 18) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", dtype, [1, 4])],
        [helper.make_tensor_value_info("y", dtype, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_offline_checker_refuses_what_the_parser_cannot_take():
    assert support.problems(_model("Relu")) == []
    assert support.problems(_model("Unique")) == [
        "operator Unique (not in TensorRT 10.3's ONNX parser)"
    ]
    assert "tensor 'x' is float64" in support.problems(_model("Relu", TensorProto.DOUBLE))
    assert "opset 21 is outside" in support.problems(_model("Relu", opset=21))[0]
    target = load_target("jetson-orin-nano")
    with pytest.raises(BuildError, match="graph g3 cannot be built by TensorRT") as e:
        COMPILER.compile(_model("Unique").SerializeToString(), target, graph_id="g3")
    assert "\n" not in str(e.value) and "Unique" in str(e.value)


def test_float64_model_is_refused_at_build_in_one_line(tmp_path):
    net = torch.nn.Linear(4, 2).double().eval()
    with pytest.raises(BuildError, match="float64") as e:
        hc.build(
            net,
            target="jetson-orin-nano",
            out=tmp_path / "d",
            backends=["tensorrt"],
            example_inputs=torch.randn(1, 4, dtype=torch.float64),
        )
    assert "\n" not in str(e.value)
    assert not (tmp_path / "d").exists()


def test_int8_needs_calibration_data_and_stores_it(tmp_path):
    target = _target(tmp_path, "int8", arch="aarch64")
    with pytest.raises(BuildError, match="int8: give --calib-data DIR"):
        hc.build(ref("TinyHyper"), target=target, out=tmp_path / "a", backends=["tensorrt"])
    calib = tmp_path / "calib"
    calib.mkdir()
    np.save(calib / "input.npy", np.random.default_rng(1).standard_normal((6, 8), np.float32))
    out = hc.build(
        ref("TinyHyper"),
        target=target,
        out=tmp_path / "b",
        backends=["tensorrt"],
        calib_data=calib,
    )
    recipe = _recipe(out, "g0")
    assert recipe["precision"] == "int8" and recipe["check_rtol"] == 5e-2
    assert recipe["calibration"] == {"file": "tensorrt/calibration/g0.safetensors", "samples": 6}
    stored = hc.core.tensors.read_tensors((out / recipe["calibration"]["file"]).read_bytes())
    assert np.array_equal(stored["input"], np.load(calib / "input.npy"))
    assert recipe["calibration"]["file"] in manifest(out)["files"]
    with pytest.raises(BuildError, match="--calib-data calibrates TensorRT int8 engines"):
        hc.build(
            ref("TinyHyper"),
            target="jetson-orin-nano",
            out=tmp_path / "c",
            backends=["tensorrt"],
            calib_data=calib,
        )


# -- the device side, against the test double ----------------------------------------------------
def test_engine_built_once_cached_and_refitted_per_variant(local_trt, fake, tmp_path):
    cache = tmp_path / "cache"
    b = hc.load(local_trt, engine_cache=cache)
    for task in range(5):
        want = b.run({"input": X}, task=task, backend="onnxruntime")["output"]
        got = b.run({"input": X}, task=task, backend="tensorrt")["output"]
        assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
    assert fake.builds == 1  # one engine for the architecture
    assert fake.refits == [sorted(WEIGHTS)] * 5  # each variant refits all its weights
    recipe = _recipe(local_trt, "g0")
    (engine,) = (cache / "tensorrt").rglob("*.engine")
    device, version = engine.parent.parent.name, engine.parent.name
    assert device == trt_runner.device_key() and version == "10.3.0.fake"
    assert engine.name.startswith(recipe["graph_sha256"][:32] + "-")
    checks = b.device_checks()
    assert len(checks) == 5 and all(c["rtol"] == 1e-2 for c in checks.values())
    # fp16 answers are off by more than the build's 1e-4, within the recorded 1e-2
    assert 1e-4 < max(c["max_rel"] for c in checks.values()) <= 1e-2

    again = hc.load(local_trt, engine_cache=cache)  # another process, same device: cache hit
    report = prepare(again)
    assert fake.builds == 1 and len(report) == 5
    assert all(e["built"] is False and e["refitted"] == 4 for r in report for e in r["engines"])
    assert all(r["checks"]["rtol"] == 1e-2 for r in report)


def test_cache_key_has_tensorrt_version_device_and_graph(local_trt, fake, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare(hc.load(local_trt, engine_cache=cache), task=0)
    fake.__version__ = "10.3.1.fake"
    prepare(hc.load(local_trt, engine_cache=cache), task=0)
    monkeypatch.setattr(trt_runner, "device_key", lambda: "another-gpu")
    prepare(hc.load(local_trt, engine_cache=cache), task=0)
    assert fake.builds == 3
    paths = list((cache / "tensorrt").rglob("*.engine"))
    levels = {p.relative_to(cache / "tensorrt").parts[:2] for p in paths}
    assert ("another-gpu", "10.3.1.fake") in levels and len(levels) == 3
    assert len({p.name for p in paths}) == 1  # one graph and recipe: one file name
    for p in paths:  # a damaged cache entry is built again, not trusted
        p.write_bytes(b"garbage")
    prepare(hc.load(local_trt, engine_cache=cache), task=0)
    assert fake.builds == 4


def test_weight_folded_by_the_builder_fails_loudly(local_trt, fake, tmp_path):
    fake.fold = {"2.weight"}
    b = hc.load(local_trt, engine_cache=tmp_path / "c")
    with pytest.raises(BackendError, match=r"cannot refit weight\(s\) 2.weight") as e:
        b.run({"input": X}, task=0, backend="tensorrt")
    assert "\n" not in str(e.value)


def test_refit_that_leaves_a_weight_out_is_refused_before_any_answer(local_trt, fake, tmp_path):
    fake.refit_ignores = {"2.bias"}
    b = hc.load(local_trt, engine_cache=tmp_path / "c")
    b.run({"input": X}, task=0, backend="tensorrt")  # built with task 0's weights: still right
    with pytest.raises(ParityError, match=r"variant \{task=1\} on tensorrt.*tolerance 0.01"):
        b.run({"input": X}, task=1, backend="tensorrt")
    assert ("v0001", "tensorrt") not in b.device_checks()
    with pytest.raises(ParityError):  # and again: a refused runner is never kept
        b.run({"input": X}, task=1, backend="tensorrt")


def test_dynamic_program_runs_on_tensorrt_blocks(fake, tmp_path):
    """Built with the double in place: TensorRT "runs here", so the build checks it too."""
    from dyn_models import Router

    out = hc.build(
        Router(),
        target=_target(tmp_path, "fp32"),
        out=tmp_path / "r",
        backends=["onnxruntime", "tensorrt"],
        parity_inputs=20,
    )
    graphs = len(manifest(out)["graphs"])
    assert fake.builds == graphs  # the build checked TensorRT's engines itself
    assert len(list((tmp_path / "default-cache").rglob("*.engine"))) == graphs
    b = hc.load(out, engine_cache=tmp_path / "c")
    x = np.random.default_rng(3).standard_normal((1, 5)).astype(np.float32)
    want = b.run({"x": x}, backend="onnxruntime")["output"]
    got = b.run({"x": x}, backend="tensorrt")["output"]
    assert np.abs(got - want).max() <= 1e-5
    assert fake.builds == 2 * graphs  # another cache folder: built again
    assert manifest(out)["variants"][0]["parity"]["tensorrt"]["max_rel"] <= 1e-3
    (check,) = b.device_checks().values()
    assert check["rtol"] == 1e-3 and check["inputs"] >= 20


def test_input_outside_the_profile_is_one_line(local_trt, fake, tmp_path):
    b = hc.load(local_trt, engine_cache=tmp_path / "c")
    with pytest.raises(BackendError, match="outside the engine's optimization profile"):
        b.run({"input": np.zeros((9, 8), np.float32)}, task=0, backend="tensorrt")


def test_prepare_command(local_trt, fake, tmp_path):
    args = ["prepare", str(local_trt), "--cache", str(tmp_path / "c"), "--cond", "task=2"]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(res.output)
    assert rec["cond"] == {"task": 2} and rec["engines"][0]["built"] is True
    assert rec["checks"]["rtol"] == 1e-2
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and "task=2" in res.output


# -- pieces ----------------------------------------------------------------------------------
def test_with_weights_makes_a_self_contained_graph(tiny_bundle):
    b = hc.load(tiny_bundle)
    v = b.select(task=3)
    graph = (tiny_bundle / "graphs" / "g0.onnx").read_bytes()
    model = onnx.load_model_from_string(with_weights(graph, b.weights(v)))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, arr in b.weights(v).items():
        assert np.array_equal(inits[name], arr)
    assert not any(t.external_data for t in model.graph.initializer)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": X})[0]
    assert np.allclose(got, b.run({"input": X}, task=3)["output"], atol=1e-6)


def test_ort_tensorrt_provider_options(tmp_path):
    target = load_target(_target(tmp_path, "fp16"))
    names = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def binding(ids):
        return Binding(b"graph", {}, target, [], [], tensor_ids=ids, engine_cache=tmp_path)

    a = provider_options(names, binding({"w": "a" * 32}))
    (trt_name, opts), *rest = a
    assert trt_name == "TensorrtExecutionProvider" and rest == names[1:]
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_timing_cache_enable"] == "True"
    assert (
        opts["trt_fp16_enable"] == "True" and opts["trt_weight_stripped_engine_enable"] == "False"
    )
    assert opts["trt_engine_cache_path"].startswith(str(tmp_path / "ort-tensorrt"))
    assert Path(opts["trt_timing_cache_path"]) == Path(opts["trt_engine_cache_path"]).parent
    other = provider_options(names, binding({"w": "b" * 32}))[0][1]
    assert other["trt_engine_cache_path"] != opts["trt_engine_cache_path"]  # per weight set
    fp32 = load_target(_target(tmp_path, "fp32"))
    b32 = Binding(b"graph", {}, fp32, [], [], engine_cache=tmp_path)
    assert provider_options(names, b32)[0][1]["trt_fp16_enable"] == "False"
    assert provider_options(names[1:], b32) == names[1:]


# -- real TensorRT -----------------------------------------------------------------------------
@pytest.mark.tensorrt
def test_real_tensorrt_builds_refits_and_checks(local_trt, tmp_path):
    """On a machine with TensorRT 10 and a GPU: every variant's engine built or fetched,
    refitted and checked against PyTorch."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    pytest.importorskip("cuda.bindings", reason="cuda-bindings is not installed here")
    if trt_runner.TensorRTRunners().runs_here(load_target(_target(tmp_path))):
        pytest.skip("TensorRT cannot run here")
    shutil.rmtree(tmp_path / "c", ignore_errors=True)
    report = prepare(hc.load(local_trt, engine_cache=tmp_path / "c"))
    assert len(report) == 5 and all(r["checks"]["max_rel"] <= 1e-2 for r in report)
