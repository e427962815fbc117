import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from models import TinyHyper

import hypercompile as hc
from hypercompile import BundleError, ConditionError, InputError


def _x(batch=1, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)


def test_every_variant_matches_pytorch(tiny_bundle):
    hm, b = TinyHyper(), hc.load(tiny_bundle)
    assert b.variants == [{"task": t} for t in range(5)]
    for cond in b.variants:
        for batch in (1, 7):
            x = _x(batch, seed=batch)
            want = hm.reference(cond, torch.from_numpy(x)).detach().numpy()
            got = b.run({"input": x}, **cond)
            assert list(got) == ["output"]
            np.testing.assert_allclose(got["output"], want, atol=1e-5, rtol=0)


def test_load_and_run_never_import_torch(tiny_bundle):
    code = (
        "import sys, numpy as np, hypercompile as hc\n"
        f"b = hc.load({str(tiny_bundle)!r})\n"
        "out = b.run({'input': np.ones((1, 8), np.float32)}, task=3)\n"
        "assert out['output'].shape == (1, 4)\n"
        "bad = [m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules]\n"
        "print('IMPORTED', bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "IMPORTED []" in res.stdout


@pytest.mark.parametrize("rel", ["weights/v0002.safetensors", "graphs/g0.onnx"])
def test_flipped_byte_is_detected_at_load(tiny_copy, rel):
    path = tiny_copy / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{rel} is damaged"):
        hc.load(tiny_copy)


def test_flipped_byte_is_detected_at_use_even_without_load_check(tiny_copy):
    b = hc.load(tiny_copy, verify=False)
    path = tiny_copy / "weights/v0001.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="v0001.safetensors is damaged"):
        b.run({"input": _x()}, task=1)
    b.run({"input": _x()}, task=0)  # the others still work


def _edit_manifest(bundle, edit):
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("evil", ["../../etc/passwd", "/etc/passwd", "weights/../../x"])
def test_manifest_paths_leaving_the_bundle_are_refused(tiny_copy, evil):
    def edit(m):
        tid = next(iter(m["variants"][0]["weights"].values()))
        m["tensors"][tid] = evil
        m["files"][evil] = "0" * 64

    _edit_manifest(tiny_copy, edit)
    with pytest.raises(BundleError, match="leaves the bundle directory"):
        hc.load(tiny_copy)


def test_file_not_covered_by_hashes_is_refused(tiny_copy):
    _edit_manifest(tiny_copy, lambda m: m["files"].pop("weights/v0003.safetensors"))
    with pytest.raises(BundleError, match="not covered by the manifest hashes"):
        hc.load(tiny_copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(schema_version=99), "unsupported schema_version 99"),
        (lambda m: m.update(variants=[]), "lists no variants"),
        (lambda m: m["variants"][0].update(graph="g9"), "names unknown graph"),
    ],
)
def test_malformed_manifest_is_refused(tiny_copy, edit, message):
    _edit_manifest(tiny_copy, edit)
    with pytest.raises(BundleError, match=message):
        hc.load(tiny_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        hc.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        hc.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="damaged"):
        hc.load(tmp_path)


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"input": np.ones((1, 9), np.float32)}, r"expected shape \[batch, 8\], got \[1, 9\]"),
        ({"input": np.ones((8,), np.float32)}, r"expected shape \[batch, 8\], got \[8\]"),
        ({"input": np.ones((1, 8), np.float64)}, "expected dtype float32, got float64"),
        ({"x": np.ones((1, 8), np.float32)}, "missing input.s. input; unknown input.s. x"),
        ({"input": [[1.0] * 8]}, "must be a numpy array"),
    ],
)
def test_wrong_inputs_are_refused(tiny_bundle, inputs, message):
    with pytest.raises(InputError, match=message):
        hc.load(tiny_bundle).run(inputs, task=0)


def test_unknown_condition_is_refused(tiny_bundle):
    b = hc.load(tiny_bundle)
    with pytest.raises(
        ConditionError, match=r"no variant matches \{task=7\}; available: \{task=0\}"
    ):
        b.run({"input": _x()}, task=7)
    with pytest.raises(ConditionError, match="5 variants match"):
        b.run({"input": _x()})


def test_session_cache_is_bounded_and_reused(tiny_bundle, monkeypatch):
    b = hc.load(tiny_bundle, cache_size=2)
    loads = []
    real = b._load_runner
    monkeypatch.setattr(b, "_load_runner", lambda v, be: loads.append(v.id) or real(v, be))
    for t in (0, 1, 0, 1, 0, 2, 0, 1):
        b.run({"input": _x()}, task=t)
    assert loads == ["v0000", "v0001", "v0002", "v0001"]
    assert len(b._runners) == 2


def test_run_from_many_threads(tiny_bundle):
    b = hc.load(tiny_bundle, cache_size=3)
    xs = [_x(2, seed=s) for s in range(5)]
    want = {(t, s): b.run({"input": xs[s]}, task=t)["output"] for t in range(5) for s in range(5)}
    errors = []

    def worker(k):
        try:
            for i in range(60):
                t, s = (k + i) % 5, (k * 7 + i) % 5
                got = b.run({"input": xs[s]}, task=t)["output"]
                np.testing.assert_array_equal(got, want[(t, s)])
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def _in_fresh_process(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


_POOLS = (
    "import numpy as np, hypercompile as hc\n"
    "def static(b):\n"
    "    r = b.load_runner(b.select(task=0), 'onnxruntime')\n"
    "    o = r.session.get_session_options()\n"
    "    return r.pool, o.use_per_session_threads\n"
    "def spinning(o):\n"
    "    try:\n"
    "        return o.get_session_config_entry('session.intra_op.allow_spinning')\n"
    "    except RuntimeError:\n"
    "        return 'default'\n"
    "def blocks(b):\n"
    "    r = b.load_runner(b.select(), 'onnxruntime')\n"
    "    opts = [(g.pool, g.session.get_session_options()) for g in r.runners.values()]\n"
    "    return sorted({(p, o.use_per_session_threads, spinning(o)) for p, o in opts})\n"
)


def test_ort_threads_are_chosen_per_bundle_static_first(tiny_bundle, router_bundle):
    """A static bundle's sessions come first: the shared pool can no longer be made, so the
    program's blocks get pools of their own with spinning off, and the static bundle keeps its
    per-session pools."""
    out = _in_fresh_process(
        _POOLS + f"s = hc.load({str(tiny_bundle)!r})\n"
        "print('S1', static(s))\n"
        f"p = hc.load({str(router_bundle)!r})\n"
        "print('P', blocks(p))\n"
        "s2 = hc.load(" + repr(str(tiny_bundle)) + ")\n"
        "print('S2', static(s2))\n"
    )
    assert "S1 ('per-session', True)" in out
    assert "P [('per-session', True, '0')]" in out
    assert "S2 ('per-session', True)" in out


def test_ort_threads_are_chosen_per_bundle_program_first(tiny_bundle, router_bundle):
    """A DyNN bundle first makes the shared pool for its blocks; ONNX Runtime then allows no
    per-session pools: a default bundle uses the shared pool too, an explicit per-session one
    is refused with the reason, an explicit shared one gets it."""
    out = _in_fresh_process(
        _POOLS + f"p = hc.load({str(router_bundle)!r})\n"
        "print('P', blocks(p))\n"
        f"print('S', static(hc.load({str(tiny_bundle)!r})))\n"
        f"print('X', static(hc.load({str(tiny_bundle)!r}, ort_pool='shared')))\n"
        "try:\n"
        f"    static(hc.load({str(tiny_bundle)!r}, ort_pool='per-session'))\n"
        "except hc.BackendError as e:\n"
        "    print('REFUSED', e)\n"
    )
    assert "P [('shared', False, 'default')]" in out
    assert "S ('shared', False)" in out
    assert "X ('shared', False)" in out
    assert "REFUSED ONNX Runtime's shared thread pool exists in this process" in out


def test_ort_pool_choices_of_a_bundle(tiny_bundle, router_bundle):
    """Explicit choices: a static bundle on the shared pool (made for it: no session came
    first), a program on per-session pools (spinning off)."""
    out = _in_fresh_process(
        _POOLS + f"s = hc.load({str(tiny_bundle)!r}, ort_pool='shared')\n"
        "print('S', static(s))\n"
        "x = np.ones((1, 8), np.float32)\n"
        "print('RUN', s.run({'input': x}, task=1)['output'].shape)\n"
    )
    assert "S ('shared', False)" in out and "RUN (1, 4)" in out
    out = _in_fresh_process(
        _POOLS + f"p = hc.load({str(router_bundle)!r}, ort_pool='per-session')\n"
        "print('P', blocks(p))\n"
    )
    assert "P [('per-session', True, '0')]" in out
    with pytest.raises(hc.BackendError, match="ort_pool must be 'shared', 'per-session' or None"):
        hc.load(tiny_bundle, ort_pool="global")
