import json
import os

import numpy as np
import pytest
import torch
from conftest import manifest, ref
from models import TinyHyper

import hypercompile as hc
from hypercompile import BuildError, ParityError


def test_tasks_of_one_architecture_share_one_graph(tiny_bundle):
    m = manifest(tiny_bundle)
    assert len(m["graphs"]) == 1 and len(m["variants"]) == 5
    assert sorted(os.listdir(tiny_bundle / "graphs")) == ["g0.onnx"]
    assert len(os.listdir(tiny_bundle / "weights")) == 5
    assert {v["graph"] for v in m["variants"]} == {"g0"}


def test_manifest_records_schema_io_parity_and_hashes(tiny_bundle):
    m = manifest(tiny_bundle)
    assert m["schema_version"] == 2 and m["producer"]["name"] == "hypercompile"
    assert m["target"]["name"] == "x86-cpu"
    assert m["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 8]}]
    assert m["outputs"] == [{"name": "output", "dtype": "float32", "shape": ["batch", 4]}]
    files = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    assert set(m["files"]) == files - {"manifest.json"}
    for v in m["variants"]:
        p = v["parity"]["onnxruntime"]
        assert p["against"] == "reference" and p["inputs"] == 5  # example + 3 random + batch 3
        assert p["max_rel"] <= 1e-4


def test_each_variant_binds_exactly_its_generated_tensors(tiny_bundle):
    from hypercompile.core.tensors import read_tensors, tensor_id

    hm, m = TinyHyper(), manifest(tiny_bundle)
    for i, cond in enumerate(hm.conditions()):
        v = m["variants"][i]
        want = {k: t.detach().numpy() for k, t in hm.generate(cond).items()}
        assert v["weights"] == {k: tensor_id(a) for k, a in want.items()}
        assert v["bytes"] == sum(a.nbytes for a in want.values())
        # the tasks share no tensor: each variant's file holds its own, stored by id
        got = read_tensors((tiny_bundle / f"weights/v{i:04d}.safetensors").read_bytes())
        assert set(got) == set(v["weights"].values())
        for k, tid in v["weights"].items():
            np.testing.assert_array_equal(got[tid], want[k])


def test_graph_has_no_weight_data(tiny_bundle):
    import onnx

    g = onnx.load(str(tiny_bundle / "graphs/g0.onnx"), load_external_data=False)
    stubs = [t for t in g.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert sorted(t.name for t in stubs) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert all(not t.raw_data for t in stubs)


def test_fifty_tasks_one_graph_and_size_within_ten_percent(tmp_path):
    out = hc.build(ref("tiny_hyper_50"), out=tmp_path / "b50")
    m = manifest(out)
    assert len(m["graphs"]) == 1 and len(m["variants"]) == 50
    graph = (out / "graphs/g0.onnx").stat().st_size
    one_task = (out / "weights/v0000.safetensors").stat().st_size
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total <= 1.10 * (graph + 50 * one_task)


def test_per_size_variants_get_one_graph_each(tmp_path):
    out = hc.build(ref("Widths"), out=tmp_path / "w")
    m = manifest(out)
    assert len(m["graphs"]) == 3
    assert [v["quality"] for v in m["variants"]] == [4.0, 8.0, 16.0]
    assert [v["parity"]["onnxruntime"]["against"] for v in m["variants"]] == ["target"] * 3
    b = hc.load(out)
    x = np.random.randn(2, 6).astype(np.float32)
    for cond in b.variants:
        hm_target = __import__("models").Widths()
        from hypercompile.frontend.materialize import materialize

        want = materialize(hm_target, cond)(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(b.run({"input": x}, **cond)["output"], want, atol=1e-5)


def test_plain_module_several_inputs_and_outputs(tmp_path):
    from models import TwoInTwoOut

    out = hc.build(ref("TwoInTwoOut"), out=tmp_path / "two")
    b = hc.load(out)
    assert [i["name"] for i in b.inputs] == ["tokens", "feats"]
    assert [o["name"] for o in b.outputs] == ["output_0", "output_1"]
    tokens = np.random.randint(0, 20, (3, 5)).astype(np.int64)
    feats = np.random.randn(3, 5, 6).astype(np.float32)
    got = b.run({"tokens": tokens, "feats": feats})
    want = TwoInTwoOut()(torch.from_numpy(tokens), torch.from_numpy(feats))
    for name, w in zip(["output_0", "output_1"], want):
        np.testing.assert_allclose(got[name], w.detach().numpy(), atol=1e-5)


def test_where_selects_conditions(tmp_path):
    out = hc.build(ref("TinyHyper"), out=tmp_path / "w", where={"task": [1, 3]})
    assert hc.load(out).variants == [{"task": 1}, {"task": 3}]
    with pytest.raises(BuildError, match="no key 'colour'"):
        hc.build(ref("TinyHyper"), out=tmp_path / "x", where={"colour": ["red"]})


def test_parity_failure_names_the_variant_and_leaves_nothing(tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(ParityError, match=r"variant task=2 on onnxruntime: max rel error"):
        hc.build(ref("WrongReference"), out=out)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_crash_mid_build_leaves_no_half_bundle(tmp_path):
    with pytest.raises(RuntimeError, match="hypernet exploded"):
        hc.build(ref("ExportFails"), out=tmp_path / "b")
    assert os.listdir(tmp_path) == []


def test_rebuild_replaces_a_bundle_but_never_a_foreign_directory(tmp_path, tiny_bundle):
    out = hc.build(ref("TinyHyper"), out=tmp_path / "b", where={"task": [0]})
    out = hc.build(ref("TinyHyper"), out=tmp_path / "b", where={"task": [4]})
    assert hc.load(out).variants == [{"task": 4}]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not a bundle; refusing"):
        hc.build(ref("TinyHyper"), out=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["b", "mine"]


def test_build_time_is_recorded(tiny_bundle):
    m = manifest(tiny_bundle)
    assert m["build_s"] > 0 and m["graphs"]["g0"]["export_s"] > 0
    json.dumps(m)  # plain JSON throughout
