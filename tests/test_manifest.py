"""The manifest schema (`core/manifest.py`): a bundle is read only through it, and a manifest
that is malformed, inconsistent or hostile is a one-line BundleError naming the field."""

import json
import shutil

import numpy as np
import pytest
from conftest import manifest, write_manifest

import hypercompile as hc
from hypercompile.core.manifest import Manifest


def _edited(src, dst, edit):
    shutil.copytree(src, dst)
    m = manifest(dst)
    edit(m)
    write_manifest(dst, m)
    return dst


def test_round_trip_keeps_the_json(tiny_bundle):
    raw = manifest(tiny_bundle)
    assert Manifest.from_json(raw).to_json() == raw


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(surprise=1), r"unknown field 'surprise'"),
        (lambda m: m["variants"][0].pop("weights"), r"variants\[0\]: missing field 'weights'"),
        (lambda m: m["variants"][1].update(params="many"), r"variants\[1\]\.params has the wrong"),
        (lambda m: m["graphs"]["g0"]["inputs"][0].update(shape=[-1, 8]), r"shape holds -1"),
        (lambda m: m["variants"][1].update(cond={"task": 0}), r"v0000 and v0001 have one cond"),
        (
            lambda m: m["variants"][1].update(
                weights=dict.fromkeys(m["variants"][1]["weights"], "0" * 32)
            ),
            r"variant v0001 names unknown tensor id\(s\) 0000",
        ),
        (lambda m: m.update(outputs=[]), r"lists no outputs"),
        (lambda m: m["target"].update(ort_threads=1_000_000), r"ort_threads"),
        (lambda m: m.update(schema_version=99), r"unsupported schema_version 99"),
        (lambda m: m["variants"][0].update(graph="g9"), r"unknown graph g9"),
    ],
)
def test_malformed_manifests_are_refused_naming_the_field(tiny_bundle, tmp_path, edit, message):
    path = _edited(tiny_bundle, tmp_path / "b", edit)
    with pytest.raises(hc.BundleError, match=message):
        hc.load(path)


def test_deeply_nested_json_is_a_bundle_error(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    (dst / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(hc.BundleError, match="damaged"):
        hc.load(dst)


def test_hostile_programs_are_refused_or_bounded(router_bundle, tmp_path):
    def loop_forever(m):
        (p,) = m["programs"].values()
        entry = next(b for b in p["blocks"] if b["id"] == p["entry"])
        entry["next"] = {"goto": entry["id"]}  # jumps to itself, no loop_header flag

    path = _edited(router_bundle, tmp_path / "loop", loop_forever)
    b = hc.load(path)
    with pytest.raises(hc.HypercompileError, match="bound of 10000 loop iterations"):
        b.run({"x": np.ones((1, 5), np.float32)})

    def huge_bound(m):
        (p,) = m["programs"].values()
        p["max_iterations"] = 10**18

    with pytest.raises(hc.BundleError, match="max_iterations"):
        hc.load(_edited(router_bundle, tmp_path / "huge", huge_bound))

    def dangling(m):
        (p,) = m["programs"].values()
        p["blocks"][0]["next"] = {"goto": 12345}

    with pytest.raises(hc.BundleError, match="jumps to block 12345, which does not exist"):
        hc.load(_edited(router_bundle, tmp_path / "dangling", dangling))


def test_the_manifest_is_replaced_without_following_a_planted_link(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    for name in (".manifest.json.tmp", f".manifest.json.tmp-{1}"):
        (dst / name).symlink_to(victim)
    m = Manifest.load(dst)
    m.dump(dst)
    assert victim.read_text() == "mine"
    assert json.loads((dst / "manifest.json").read_text())["variants"]


def test_a_graph_naming_a_file_outside_the_bundle_is_refused(tiny_bundle, tmp_path):
    """A hostile graph whose initializer takes its bytes from `../../etc/passwd` (ONNX Runtime
    would resolve it against the working directory and hand the file back as an output)."""
    import onnx
    from onnx import TensorProto, helper

    from hypercompile.core import tensors as fmt

    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    m = manifest(dst)
    rel = m["graphs"]["g0"]["artifacts"]["onnxruntime"]
    model = onnx.load(str(dst / rel), load_external_data=False)
    stolen = TensorProto(name="stolen", data_type=TensorProto.UINT8, dims=[16])
    stolen.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../../../../../etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = stolen.external_data.add()
        entry.key, entry.value = k, v
    model.graph.initializer.append(stolen)
    model.graph.output.append(helper.make_tensor_value_info("stolen", TensorProto.UINT8, [16]))
    onnx.save(model, str(dst / rel))
    m["files"][rel] = fmt.sha256_file(dst / rel)
    m.setdefault("sizes", {})[rel] = (dst / rel).stat().st_size
    write_manifest(dst, m)
    with pytest.raises(hc.BundleError, match=r"takes tensor 'stolen' from '\.\./"):
        hc.load(dst).run({"input": np.ones((1, 8), np.float32)}, task=0)


def test_the_graph_scan_finds_only_the_weight_stubs_of_a_real_bundle(tiny_bundle):
    from hypercompile.core.tensors import WEIGHT_STUB_LOCATION
    from hypercompile.runtime.runners.onnx_scan import external_locations

    m = manifest(tiny_bundle)
    g = m["graphs"]["g0"]
    found = external_locations((tiny_bundle / g["artifacts"]["onnxruntime"]).read_bytes())
    assert found == {(w, WEIGHT_STUB_LOCATION) for w in g["weights"]}
