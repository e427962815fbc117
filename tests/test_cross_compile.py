"""TVM libraries for other devices: Jetson (aarch64 host code + sm_87 CUDA kernels compiled ahead
of time), x86-cuda; checks that only the device can run travel in the bundle and run there."""

import json
import re
import shutil
import struct

import numpy as np
import pytest
import torch
from conftest import ref, write_manifest
from dyn_models import Router
from models import TinyHyper

import hypercompile as hc
from hypercompile.compilers.tvm.device import (
    cuda_toolkit_missing,
    elf_machine,
    find_nvcc,
    nvcc_info,
    patch_cuda_modules,
)
from hypercompile.core import tensors as fmt
from hypercompile.errors import BackendError, BuildError, ParityError

pytest.importorskip("tvm", reason="apache-tvm is an optional back end")
needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="no nvcc (CUDA toolkit) here")
needs_cuda12 = pytest.mark.skipif(
    cuda_toolkit_missing("12.6") is not None,
    reason=f"no CUDA 12 NVRTC here: {cuda_toolkit_missing('12.6')}",
)
needs_cross = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None,
    reason="no aarch64 cross compiler (apt-get install g++-aarch64-linux-gnu)",
)


def cubins(data: bytes) -> list[tuple[int, int, int]]:
    """(ELF OSABI, ABI version, SM number) of every CUDA ELF image embedded in a library (alone
    or inside a fatbin): OSABI 51 / ABI 7 is CUDA 12's, 65 / 8 CUDA 13's."""
    found, pos = [], data.find(b"\x7fELF", 1)
    while pos >= 0:
        (machine,) = struct.unpack_from("<H", data, pos + 18)
        (flags,) = struct.unpack_from("<I", data, pos + 48)
        if machine == 190:  # EM_CUDA: the SM is e_flags' low byte (CUDA 12), bits 8..15 (13)
            sm = flags & 0xFF if data[pos + 7] == 51 else (flags >> 8) & 0xFF
            found.append((data[pos + 7], data[pos + 8], sm))
        pos = data.find(b"\x7fELF", pos + 1)
    return found


@needs_cuda12
@needs_cross
def test_jetson_library_is_aarch64_with_cuda12_sm87_kernels(jetson_bundle):
    """JetPack 6 runs CUDA 12: every GPU image is CUDA 12 code (not this machine's nvcc 13)."""
    libs = sorted((jetson_bundle / "tvm").glob("*.so"))
    assert [p.name for p in libs] == ["g0.so"]  # five tasks, one library
    data = libs[0].read_bytes()
    assert elf_machine(data) == "aarch64"
    assert struct.unpack_from("<H", data, 16)[0] == 3  # ET_DYN: a shared object
    kernels = cubins(data)
    assert kernels and all(k == (51, 7, 87) for k in kernels), kernels
    assert b'extern "C" __global__' not in data  # compiled, not CUDA source


@needs_cuda12
@needs_cross
def test_xavier_nx_builds_cuda12_sm72_kernels(tmp_path):
    """sm_72 (Volta): CUDA 13 cannot target it; NVRTC 12 can."""
    out = hc.build(
        ref("TinyHyper"), target="jetson-xavier-nx", out=tmp_path / "x", backends=["tvm"],
        where={"task": [0]},
    )  # fmt: skip
    kernels = cubins((out / "tvm" / "g0.so").read_bytes())
    assert kernels and all(k == (51, 7, 72) for k in kernels), kernels


@needs_cuda12
@needs_cross
def test_jetson_manifest_marks_device_artifacts(jetson_bundle):
    m = json.loads((jetson_bundle / "manifest.json").read_text())
    assert m["target"]["arch"] == "aarch64"
    assert m["target"]["tvm_target"]["arch"] == "sm_87"
    assert m["target"]["cuda"] == "12.6"
    info = m["graphs"]["g0"]["artifact_info"]["tvm"]
    assert info["elf"] == "aarch64" and info["device_code"]["cubins"] >= 1
    assert info["device_code"]["elf_abi"] == [[51, 7]] and info["toolkit"].startswith("nvrtc 12.")
    for v in m["variants"]:
        assert "deferred" in v["parity"]["tvm"]  # this x86 machine cannot run them
        assert v["parity"]["onnxruntime"]["max_rel"] <= 1e-4  # portable graphs: checked here
        assert v["checks"] in m["files"]


@needs_cuda12
@needs_cross
def test_wrong_machine_says_so_and_onnx_still_runs(jetson_bundle):
    b = hc.load(jetson_bundle)
    x = np.ones((2, 8), np.float32)
    with pytest.raises(BackendError, match="built for jetson-orin-nano.*aarch64.*x86_64"):
        b.run({"input": x}, task=2, backend="tvm")
    want = TinyHyper().reference({"task": 2}, torch.from_numpy(x)).detach().numpy()
    got = b.run({"input": x}, task=2, backend="onnxruntime")["output"]
    assert np.abs(got - want).max() <= 1e-4


@pytest.fixture(scope="module")
def x86_cuda_bundle(tmp_path_factory):
    """TinyHyper's 5 tasks for x86-cuda on TVM (tests must not modify it)."""
    if find_nvcc() is None:
        pytest.skip("no nvcc (CUDA toolkit) here")
    out = tmp_path_factory.mktemp("c") / "c"
    return hc.build(ref("TinyHyper"), target="x86-cuda", out=out, backends=["tvm"])


@needs_nvcc
def test_x86_cuda_kernels_are_compiled_for_sm90(x86_cuda_bundle):
    data = (x86_cuda_bundle / "tvm" / "g0.so").read_bytes()
    assert elf_machine(data) == "x86_64"
    assert {sm for _, _, sm in cubins(data)} == {90}


@needs_nvcc
def test_nvcc_that_cannot_target_the_gpu_is_a_clear_error(tmp_path):
    _, sms = nvcc_info(find_nvcc())
    target = tmp_path / "old-gpu.toml"
    target.write_text(
        'name = "old-gpu"\narch = "x86_64"\nbackends = ["tvm"]\n'
        'tvm_target = { kind = "cuda", arch = "sm_35" }\n'
    )
    assert "sm_35" not in sms  # no current toolkit targets Kepler
    with pytest.raises(BuildError, match="cannot compile for sm_35.*HYPERCOMPILE_NVCC"):
        hc.build(ref("TinyHyper"), target=str(target), out=tmp_path / "o", backends=["tvm"])
    assert not (tmp_path / "o").exists()


def test_missing_cross_compiler_says_how_to_install(tmp_path):
    target = tmp_path / "board.toml"
    target.write_text(
        'name = "board"\narch = "aarch64"\nbackends = ["tvm"]\n'
        'tvm_target = { kind = "llvm", mtriple = "aarch64-linux-gnu" }\n'
        'cross_compiler = "no-such-cross-g++"\n'
    )
    with pytest.raises(BackendError, match="no-such-cross-g\\+\\+ not found.*apt-get install"):
        hc.build(ref("TinyHyper"), target=str(target), out=tmp_path / "o", backends=["tvm"])
    assert not (tmp_path / "o").exists()


def test_blob_patch_replaces_source_and_rejects_unknown_layouts():
    source = 'extern "C" __global__ void k() {}'
    table = b"\x01" * 12  # the function table is carried over untouched
    module = (
        struct.pack("<Q", 4) + b"cuda" + table + struct.pack("<Q", len(source)) + source.encode()
    )
    body = struct.pack("<Q", 3) + struct.pack("<3Q", 0, 1, 1) + struct.pack("<Q", 1)
    body += struct.pack("<Q", 1) + struct.pack("<Q", 4) + b"_lib"
    body += struct.pack("<Q", 4) + b"cuda" + struct.pack("<Q", len(module)) + module
    blob = struct.pack("<Q", len(body)) + body
    patched = patch_cuda_modules(blob, [source], [b"FATBIN-BYTES"])
    assert source.encode() not in patched
    assert b"fatbin" + table + struct.pack("<Q", 12) + b"FATBIN-BYTES" in patched
    assert struct.unpack_from("<Q", patched)[0] == len(patched) - 8
    with pytest.raises(BuildError, match="unknown layout"):
        patch_cuda_modules(blob, ["other source"], [b"x"])
    with pytest.raises(BuildError, match="unknown layout"):
        patch_cuda_modules(blob[:-5], [source], [b"x"])


def _router_case(cond):
    x = np.random.default_rng(3).standard_normal((1, 5)).astype(np.float32)
    return {"x": x}, Router()(torch.from_numpy(x)).detach().numpy()


def _tiny_case(cond):
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    return {"input": x}, TinyHyper().reference(cond, torch.from_numpy(x)).detach().numpy()


def _defer_tvm_checks(path, corrupt: bool, case=_router_case) -> None:
    """Turn a TVM bundle whose parity the build measured into one whose TVM parity must be
    checked on the device, as a bundle built on another machine: store PyTorch's answers
    (`case(cond)` -> feeds, answer; optionally wrong) and mark TVM's parity deferred."""
    from hypercompile.runtime.checks import pack_checks

    m = json.loads((path / "manifest.json").read_text())
    (path / "checks").mkdir(exist_ok=True)
    for v in m["variants"]:
        feeds, want = case(v["cond"])
        if corrupt:
            want = want + 1.0
        rel = f"checks/{v['id']}.safetensors"
        fmt.write_tensors(path / rel, pack_checks([feeds], [[want]]))
        m["files"][rel] = fmt.sha256_file(path / rel)
        m.setdefault("sizes", {})[rel] = (path / rel).stat().st_size
        v["checks"] = rel
        v["parity"]["tvm"] = {"deferred": "test", "inputs": 1, "against": "eager forward"}
    write_manifest(path, m)


def test_device_checks_run_before_first_answer(router_tvm, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(router_tvm, good)
    shutil.copytree(router_tvm, bad)
    _defer_tvm_checks(good, corrupt=False)
    _defer_tvm_checks(bad, corrupt=True)
    x = np.random.default_rng(4).standard_normal((1, 5)).astype(np.float32)
    b = hc.load(good)
    out = b.run({"x": x}, backend="tvm")
    assert b.device_checks()[("v0000", "tvm")]["max_abs"] <= 1e-4
    want = Router()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(out["output"] - want).max() <= 1e-4
    with pytest.raises(ParityError, match="on this device exceeds tolerance"):
        hc.load(bad).run({"x": x}, backend="tvm")


def test_local_profiling_runs_the_stored_checks_before_timing(router_tvm, tmp_path):
    from hypercompile.devtools.profile import profile

    bad = tmp_path / "bad"
    shutil.copytree(router_tvm, bad)
    _defer_tvm_checks(bad, corrupt=True)
    before = (bad / "manifest.json").read_bytes()
    with pytest.raises(ParityError, match="on this device exceeds tolerance"):
        profile(bad, backends=["tvm"], warmup=1, repeat=10)
    assert (bad / "manifest.json").read_bytes() == before  # no profile stored


@pytest.mark.gpu
@needs_nvcc
def test_x86_cuda_bundle_answers_like_pytorch_on_the_gpu(x86_cuda_bundle, tmp_path):
    from hypercompile.core.targets import load_target
    from hypercompile.runtime.runners import get_runner_factory

    reason = get_runner_factory("tvm").runs_here(load_target("x86-cuda"))
    if reason:
        pytest.skip(f"x86-cuda TVM artifacts cannot run here: {reason}")
    # built on this machine, which has the GPU: the build ran every variant on it and
    # recorded parity; nothing is left for the runtime to check
    m = json.loads((x86_cuda_bundle / "manifest.json").read_text())
    for v in m["variants"]:
        p = v["parity"]["tvm"]
        assert "deferred" not in p and p["max_rel"] <= 1e-4 and p["inputs"] >= 1, p
        assert "checks" not in v
    b, hm = hc.load(x86_cuda_bundle), TinyHyper()
    x = np.random.default_rng(5).standard_normal((32, 8)).astype(np.float32)
    for cond in b.variants:
        got = b.run({"input": x}, backend="tvm", **cond)["output"]
        want = hm.reference(cond, torch.from_numpy(x)).detach().numpy()
        assert np.abs(got - want).max() <= 1e-4
    assert b.device_checks() == {}
    # the same libraries as a bundle built elsewhere: the runtime runs the stored checks on
    # this GPU before a variant's first answer, and refuses wrong ones
    good, bad = tmp_path / "good", tmp_path / "bad"
    for dst, corrupt in ((good, False), (bad, True)):
        shutil.copytree(x86_cuda_bundle, dst)
        _defer_tvm_checks(dst, corrupt, case=_tiny_case)
    b = hc.load(good)
    for cond in b.variants:
        got = b.run({"input": x}, backend="tvm", **cond)["output"]
        want = hm.reference(cond, torch.from_numpy(x)).detach().numpy()
        assert np.abs(got - want).max() <= 1e-4
        assert b.device_checks()[(b.select(**cond).id, "tvm")]["max_rel"] <= 1e-4
    with pytest.raises(ParityError, match="on this device exceeds tolerance"):
        hc.load(bad).run({"input": x}, backend="tvm", task=0)


def test_tvm_target_tags_expand_and_unknown_tags_are_named(tmp_path):
    from hypercompile.compilers.tvm.compile import resolve_target
    from hypercompile.core.targets import load_target

    spec = resolve_target(load_target("jetson-agx-orin"))  # tvm_tag = nvidia/jetson-agx-orin-32gb
    assert spec["kind"] == "cuda" and spec["arch"] == "sm_87"
    assert spec["host"]["mtriple"] == "aarch64-linux-gnu" and spec["host"]["mcpu"] == "cortex-a78"
    target = tmp_path / "t.toml"
    target.write_text(
        'name = "t"\narch = "x86_64"\nbackends = ["tvm"]\ntvm_tag = "acme/npu-9000"\n'
    )
    with pytest.raises(BuildError, match="unknown TVM target tag 'acme/npu-9000'"):
        hc.build(ref("TinyHyper"), target=str(target), out=tmp_path / "o", backends=["tvm"])


def test_a_cuda_tag_without_nvcc_leaves_tvm_out_by_default(tmp_path, monkeypatch):
    """A target naming only a TVM tag is judged as the tag expands (a CUDA GPU): without nvcc,
    the default back ends leave TVM out and the build goes on; asking for TVM says why not."""
    from hypercompile.compilers.tvm import device
    from hypercompile.core.targets import host_arch

    monkeypatch.setattr(device, "find_nvcc", lambda: None)
    target = tmp_path / "gpu.toml"
    target.write_text(
        f'name = "gpu"\narch = "{host_arch()}"\nbackends = ["tvm", "onnxruntime"]\n'
        'tvm_tag = "nvidia/geforce-rtx-3080"\n'
    )
    path = hc.build(ref("TinyHyper"), target=str(target), out=tmp_path / "d", where={"task": [0]})
    m = json.loads((path / "manifest.json").read_text())
    assert [list(v["artifacts"]) for v in m["variants"]] == [["onnxruntime"]]
    assert m["target"]["tvm_tag"] == "nvidia/geforce-rtx-3080"  # as given: TVM compiled nothing
    with pytest.raises(BackendError, match="back end tvm: the target has a CUDA GPU but no nvcc"):
        hc.build(ref("TinyHyper"), target=str(target), out=tmp_path / "t", backends=["tvm"])
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "driver, says",
    [
        (None, r"GPU code is CUDA 12\.6 and this machine has no CUDA driver"),
        (11040, r"GPU code is CUDA 12\.6 and this machine's driver supports CUDA 11\.4 only"),
    ],
)
def test_runtime_refuses_gpu_code_the_driver_cannot_load(monkeypatch, driver, says):
    """A library of CUDA 12 code on a machine whose driver is older (or absent) is refused in
    one line before TVM tries to load it."""
    import dataclasses

    from hypercompile.core.targets import host_arch, load_target
    from hypercompile.runtime.runners import get_runner_factory
    from hypercompile.runtime.runners import tvm as tvm_runner

    monkeypatch.setattr(tvm_runner, "cuda_driver_version", lambda: driver)
    here = dataclasses.replace(load_target("x86-cuda"), arch=host_arch(), cuda="12.6")
    assert re.search(says, get_runner_factory("tvm").runs_here(here))
    monkeypatch.setattr(tvm_runner, "cuda_driver_version", lambda: 12060)
    assert "driver" not in (get_runner_factory("tvm").runs_here(here) or "")
