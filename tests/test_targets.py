import pytest

from hypercompile import TargetError
from hypercompile.core.targets import DEFAULT_TARGET, list_targets, load_target


def test_default_target_is_x86_cpu_on_onnxruntime():
    t = load_target(None)
    assert t.name == DEFAULT_TARGET == "x86-cpu"
    assert t.backends[0] == "onnxruntime"
    assert "CPUExecutionProvider" in t.ort_providers
    assert "x86-cpu" in [t.name for t in list_targets()]


def test_user_target_file(tmp_path):
    p = tmp_path / "board.toml"
    p.write_text('name = "board"\narch = "aarch64"\nbackends = ["onnxruntime"]\nmemory_mb = 512\n')
    t = load_target(str(p))
    assert (t.name, t.arch, t.memory_mb) == ("board", "aarch64", 512)


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "x"\narch = "y"\n', "missing required key 'backends'"),
        ('name = "x"\narch = "y"\nbackends = ["cuda-magic"]\n', "backends must be"),
        ('name = "x"\narch = "y"\nbackends = ["onnxruntime"]\ncolour = 1\n', "unknown key"),
        ('name = "x"\narch = 3\nbackends = ["onnxruntime"]\n', "'arch' must be a str"),
        ("name = [", "invalid TOML"),
    ],
)
def test_invalid_target_files_name_the_problem(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(TargetError, match=message) as e:
        load_target(str(p))
    assert str(p) in str(e.value)


def test_unknown_target_name_lists_known_ones():
    with pytest.raises(TargetError, match="unknown target 'nope'.*x86-cpu"):
        load_target("nope")


def test_shipped_device_targets():
    names = {t.name for t in list_targets()}
    assert {
        "x86-cpu",
        "x86-cuda",
        "jetson-orin-nano",
        "jetson-agx-orin",
        "jetson-xavier-nx",
    } <= names
    nano = load_target("jetson-orin-nano")
    assert nano.arch == "aarch64" and nano.tvm_tag == "nvidia/jetson-orin-nano"
    assert nano.tvm_host["mtriple"] == "aarch64-linux-gnu"
    assert nano.cross_compiler == "aarch64-linux-gnu-g++"


def test_build_for_a_jetson_keeps_the_back_ends_that_build_here(jetson_bundle, tmp_path):
    import json

    from conftest import ref

    import hypercompile as hc

    # jetson_bundle (conftest) is built without --backend: the target's back ends
    m = json.loads((jetson_bundle / "manifest.json").read_text())
    assert m["target"]["name"] == "jetson-orin-nano"
    # TVM (cross-compiled, with CUDA kernels) where the toolchain is here, and ONNX graphs
    from hypercompile.compilers.tvm.device import toolchain_missing
    from hypercompile.core.targets import load_target

    tvm_here = toolchain_missing(load_target("jetson-orin-nano")) is None
    # TensorRT's recipes build anywhere (its engines are built on the device)
    want = ["tvm", "onnxruntime", "tensorrt"] if tvm_here else ["onnxruntime", "tensorrt"]
    assert all(list(v["artifacts"]) == want for v in m["variants"])
    # a target without TensorRT says so when it is asked for
    with pytest.raises(hc.BackendError, match="target x86-cpu lists no tensorrt back end"):
        hc.build(ref("TinyHyper"), target="x86-cpu", out=tmp_path / "k", backends=["tensorrt"])
    assert not (tmp_path / "k").exists()
