"""Content-addressed weight storage: each distinct tensor stored once per bundle and bound once
per process; schema-1 bundles still load; a damaged or hostile tensor table is a one-line
BundleError."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import manifest
from storage_models import StitchFamily

import hypercompile as hc
from hypercompile import BundleError
from hypercompile.core import tensors as fmt

FIXTURES = Path(__file__).parent / "fixtures" / "schema_v1"


@pytest.fixture(scope="module")
def stitch(tmp_path_factory):
    """The SN-Net family (8 stitch configurations of two anchors), built once (read only)."""
    hm = StitchFamily()
    return hm, hc.build(hm, out=tmp_path_factory.mktemp("s") / "stitch")


def _weight_file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "weights").iterdir())


def test_stitch_family_stores_each_tensor_once(stitch):
    hm, path = stitch
    m = manifest(path)
    variants = m["variants"]
    assert len(variants) == 8 and len(m["graphs"]) == 8
    # what the variants hold, and what is distinct among it, counted here from PyTorch
    distinct = {}
    for cond, v in zip(hm.conditions(), variants):
        state = {k: t.numpy() for k, t in hm.generate(cond).items()}
        assert v["weights"] == {k: fmt.tensor_id(a) for k, a in state.items()}
        assert v["bytes"] == sum(a.nbytes for a in state.values())
        distinct.update({fmt.tensor_id(a): a.nbytes for a in state.values()})
    unique = sum(distinct.values())
    assert m["weight_bytes"] == unique and set(m["tensors"]) == set(distinct)
    assert sum(v["bytes"] for v in variants) > 3 * unique  # the anchors, once per variant
    assert _weight_file_bytes(path) <= 1.15 * unique
    # anchors' tensors are shared: a small -> large stitch takes the small embedding
    small = variants[0]["weights"]
    stitched = next(
        v for v in variants if v["cond"] == {"front": "small", "back": "large", "at": 2}
    )
    assert stitched["weights"]["embed.weight"] == small["embed.weight"]


def test_every_stitch_configuration_matches_pytorch_on_onnxruntime(stitch):
    hm, path = stitch
    b = hc.load(path)
    x = np.random.default_rng(0).standard_normal((5, hm.in_dim)).astype(np.float32)
    for cond in hm.conditions():
        with torch.no_grad():
            want = hm.build(cond)(torch.from_numpy(x)).numpy()
        got = b.run({"x": x}, backend="onnxruntime", **cond)["output"]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert b.manifest.variants[0].parity["onnxruntime"].max_abs < 1e-5


def test_shared_tensors_are_bound_once_across_variants(stitch):
    hm, path = stitch
    b = hc.load(path, cache_size=16)
    x = np.ones((1, hm.in_dim), np.float32)
    for cond in hm.conditions():
        b.run({"x": x}, **cond)
    runners = list(b._runners.values())
    assert len(runners) == 8 and all(r.shared for r in runners)  # ORT reads them in place
    first, stitched = b.manifest.variants[0], b.manifest.variants[2]
    assert stitched.weights["embed.weight"] == first.weights["embed.weight"]
    # the same array for both variants, and one OrtValue that both sessions were given
    assert b.weights(first)["embed.weight"] is b.weights(stitched)["embed.weight"]
    tid = first.weights["embed.weight"]
    values = [h.value for r in runners for h in r._keepalive[0]]
    held = b._shared.get(("onnxruntime", tid), lambda: None).value
    assert held is not None and sum(v is held for v in values) >= 2
    # running every variant left the stored bytes as they were (nothing written in place)
    for v in b.manifest.variants:
        for name, arr in b.weights(v).items():
            assert fmt.tensor_id(arr) == v.weights[name]


def test_inspect_shows_unique_and_summed_weight_bytes(stitch):
    from hypercompile.cli import main

    _, path = stitch
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "stored once each" in res.output and "summed over the variants" in res.output
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    sizes = json.loads(res.output)["weight_bytes"]
    m = manifest(path)
    assert sizes == {
        "unique": m["weight_bytes"],
        "per_variant_sum": sum(v["bytes"] for v in m["variants"]),
    }


# -- schema 1 ---------------------------------------------------------------------------------


def test_schema_1_bundles_load_and_run(tmp_path):
    """Bundles built by the last schema-1 hypercompile (see fixtures/schema_v1/README.md)."""
    from dyn_models import Router
    from models import TinyHyper
    from state_models import RunningNorm

    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    b = hc.load(FIXTURES / "tiny")
    assert b.manifest.schema_version == 1
    hm = TinyHyper()
    for cond in b.variants:
        want = hm.reference(cond, torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(b.run({"input": x}, **cond)["output"], want, atol=1e-5)

    router = Router()
    b = hc.load(FIXTURES / "router")
    for row in np.random.default_rng(2).standard_normal((10, 1, 5)).astype(np.float32):
        with torch.no_grad():
            want = router(torch.from_numpy(row)).numpy()
        np.testing.assert_allclose(b.run({"x": row})["output"], want, atol=1e-5)

    torch.manual_seed(0)
    norm = RunningNorm()
    s = hc.load(FIXTURES / "state").stream()
    for row in np.random.default_rng(3).standard_normal((4, 2, 4)).astype(np.float32):
        with torch.no_grad():
            want = norm(torch.from_numpy(row)).numpy()
        np.testing.assert_allclose(s.run({"x": row})["output"], want, atol=1e-5)

    # profiling rewrites the manifest: it stays schema 1 and loads again
    copy = tmp_path / "tiny"
    shutil.copytree(FIXTURES / "tiny", copy)
    m = hc.load(copy).manifest
    m.dump(copy)
    assert manifest(copy)["schema_version"] == 1
    assert manifest(copy)["variants"][0]["weights"] == "weights/v0000.safetensors"
    hc.load(copy).run({"input": x}, task=1)


def test_schema_1_damaged_weight_file_is_refused(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(FIXTURES / "tiny", copy)
    path = copy / "weights/v0002.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    b = hc.load(copy, verify=False)
    with pytest.raises(BundleError, match="v0002.safetensors is damaged"):
        b.run({"input": np.ones((1, 8), np.float32)}, task=2)


# -- hostile tables ---------------------------------------------------------------------------


def _edit(path: Path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _add_file(path: Path, rel: str, data: bytes, m: dict) -> None:
    """Put `data` in the bundle at `rel` with a correct hash and size in the manifest `m`, as
    someone who rewrites a bundle would."""
    (path / rel).write_bytes(data)
    m["files"][rel] = fmt.sha256_bytes(data)
    m["sizes"][rel] = len(data)


def _run_all(path: Path) -> None:
    b = hc.load(path)
    for cond in b.variants:
        b.run({"input": np.ones((1, 8), np.float32)}, **cond)


def _tensor_file(tensors: dict[str, np.ndarray], tmp: Path) -> bytes:
    fmt.write_tensors(tmp / "t", tensors)
    return (tmp / "t").read_bytes()


def _first(m: dict, i: int = 0) -> tuple[str, str]:
    return next(iter(m["variants"][i]["weights"].items()))


def _unknown_id(m):
    name, _ = _first(m)
    m["variants"][0]["weights"][name] = "f" * 32


def _not_an_id(m):
    name, tid = _first(m)
    m["variants"][0]["weights"][name] = "../x"
    m["tensors"]["../x"] = m["tensors"][tid]


def _missing_name(m):
    name, _ = _first(m)
    del m["variants"][0]["weights"][name]


def _extra_name(m):
    m["variants"][0]["weights"]["no.such.weight"] = _first(m)[1]


def _swapped_shapes(m):
    w = m["variants"][0]["weights"]
    w["0.weight"], w["2.weight"] = w["2.weight"], w["0.weight"]


def _other_file(m):
    tid = _first(m)[1]
    m["tensors"][tid] = "weights/v0001.safetensors"  # hashed, but does not hold it


def _escaping(m):
    tid = _first(m)[1]
    m["tensors"][tid] = "weights/../../../etc/passwd"
    m["files"]["weights/../../../etc/passwd"] = "0" * 64


def _negative_bytes(m):
    m["weight_bytes"] = -1


@pytest.mark.parametrize(
    "edit, message",
    [
        (_unknown_id, r"variant v0000 names unknown tensor id\(s\) fff"),
        (_not_an_id, r"'\.\./x' is not a tensor id"),
        (_missing_name, r"variant v0000 has no tensor for"),
        (_extra_name, r"names tensors for no.such.weight, which none of its graphs takes"),
        (_swapped_shapes, r"weight '0.weight' of graph g0 is float32 \[4, 16\], the graph takes"),
        (_other_file, r"v0001.safetensors lacks tensor"),
        (_escaping, r"leaves the bundle directory"),
        (_negative_bytes, r"weight_bytes must be a byte count"),
    ],
)
def test_hostile_tensor_tables_are_one_line_bundle_errors(tiny_copy, edit, message):
    _edit(tiny_copy, edit)
    with pytest.raises(BundleError, match=message) as e:
        _run_all(tiny_copy)
    assert "\n" not in str(e.value)


def test_a_tensor_of_another_dtype_is_refused(tiny_copy, tmp_path):
    """A rewritten bundle whose table points a weight at a float64 tensor, correctly hashed."""
    m = manifest(tiny_copy)
    name, tid = _first(m)
    arr = hc.load(tiny_copy).weights(hc.load(tiny_copy).manifest.variants[0])[name]
    wide = arr.astype(np.float64)
    wide_id = fmt.tensor_id(wide)
    _add_file(tiny_copy, "weights/extra.safetensors", _tensor_file({wide_id: wide}, tmp_path), m)
    m["tensors"][wide_id] = "weights/extra.safetensors"
    m["variants"][0]["weights"][name] = wide_id
    (tiny_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=rf"weight '{name}' of graph g0 is float64"):
        _run_all(tiny_copy)


def test_a_tensor_that_does_not_hash_to_its_id_is_refused(tiny_copy, tmp_path):
    """The file's own hash is right (rewritten with the manifest), the tensor's is not."""
    m = manifest(tiny_copy)
    rel = "weights/v0001.safetensors"
    stored = fmt.read_tensors((tiny_copy / rel).read_bytes())
    changed = {k: a.copy() for k, a in stored.items()}
    next(iter(changed.values())).flat[0] += 1.0
    _add_file(tiny_copy, rel, _tensor_file(changed, tmp_path), m)
    (tiny_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"tensor \w+ in weights/v0001.safetensors does not "):
        _run_all(tiny_copy)


def test_repeated_ids_are_refused(tiny_copy):
    # in the manifest: JSON would keep the last of two equal keys silently
    text = (tiny_copy / "manifest.json").read_text()
    m = json.loads(text)
    tid, rel = next(iter(m["tensors"].items()))
    entry = f'"{tid}": "{rel}"'
    dup = json.dumps(m).replace(entry, f'{entry}, "{tid}": "weights/v0004.safetensors"', 1)
    assert dup != json.dumps(m)
    (tiny_copy / "manifest.json").write_text(dup)
    with pytest.raises(BundleError, match=f"key '{tid}' appears twice"):
        hc.load(tiny_copy)


def test_repeated_ids_in_a_tensor_file_are_refused(tiny_copy):
    m = manifest(tiny_copy)
    rel = "weights/v0002.safetensors"
    data = (tiny_copy / rel).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    tid, spec = next(iter(header.items()))
    raw = json.dumps(header)[:-1] + f', "{tid}": {json.dumps(spec)}}}'
    raw = raw.encode() + b" " * (-len(raw) % 8)
    _add_file(tiny_copy, rel, struct.pack("<Q", len(raw)) + raw + data[8 + n :], m)
    (tiny_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"{rel} is damaged: key '{tid}' appears twice"):
        _run_all(tiny_copy)
