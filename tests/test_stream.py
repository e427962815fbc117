"""State kept between calls is carried through the graph and run as a stream, or refused;
never frozen."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import manifest, write_manifest
from state_models import (
    CallCounter,
    EvolvingHyper,
    EvolvingWeights,
    Membrane,
    RunningNorm,
    StreamingGRU,
)

import hypercompile as hc
from hypercompile.errors import BundleError, StateError, UnsupportedModelError


def _eager_sequence(model, seq):
    model = copy.deepcopy(model)
    with torch.no_grad():
        return [model(*xs).numpy() for xs in seq]


@pytest.fixture(scope="module")
def norm(tmp_path_factory):
    torch.manual_seed(0)
    model = RunningNorm().eval()
    out = hc.build(
        model, out=tmp_path_factory.mktemp("s") / "norm", example_inputs=(torch.randn(1, 4),)
    )
    return model, out


def test_stateful_bundle_answers_like_the_model_call_after_call(norm):
    model, out = norm
    b = hc.load(out)
    gen = torch.Generator().manual_seed(5)
    seq = [(torch.randn(2, 4, generator=gen),) for _ in range(25)]  # dynamic batch kept
    s = b.stream()
    got = [s.run({"x": xs[0].numpy()})["output"] for xs in seq]
    for i, (g, w) in enumerate(zip(got, _eager_sequence(model, seq))):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"call {i}")
    assert set(s.state) == {"mean"} and s.state["mean"].shape == (4,)
    assert not np.allclose(s.state["mean"], 0)  # it moved
    s.reset()
    np.testing.assert_allclose(s.run({"x": seq[0][0].numpy()})["output"], got[0], rtol=1e-6)


def test_streams_are_independent_and_plain_run_names_stream(norm):
    _, out = norm
    b = hc.load(out)
    x = np.ones((1, 4), np.float32)
    a, c = b.stream(), b.stream()
    first = a.run({"x": x})["output"]
    a.run({"x": x})
    np.testing.assert_allclose(c.run({"x": x})["output"], first, rtol=1e-6)
    with pytest.raises(StateError, match=r"stream\(\)"):
        b.run({"x": x})


def test_manifest_records_state_and_a_sequence_parity(norm):
    _, out = norm
    m = manifest(out)
    (g,) = m["graphs"].values()
    assert g["state"] == [{"key": "mean", "input": "state_in_0", "output": "state_out_0"}]
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    (v,) = m["variants"]
    assert v["parity"]["onnxruntime"]["inputs"] >= 20
    assert "calls in a row" in v["parity"]["onnxruntime"]["against"]


def test_state_naming_no_graph_tensor_is_refused(norm, tmp_path):
    import shutil

    _, out = norm
    dst = tmp_path / "b"
    shutil.copytree(out, dst)
    data = manifest(dst)
    next(iter(data["graphs"].values()))["state"][0]["input"] = "x_other"
    write_manifest(dst, data)
    with pytest.raises(BundleError, match="names no graph input"):
        hc.load(dst)


def test_reassigned_hidden_state_streams_from_the_cli(tmp_path):
    torch.manual_seed(1)
    model = StreamingGRU().eval()
    out = hc.build(model, out=tmp_path / "gru", example_inputs=(torch.randn(1, 4),))
    (g,) = manifest(out)["graphs"].values()
    assert not g["dynamic_batch"] and "batch of 3" in g["fixed_batch"]  # the state ties it
    seq = np.random.default_rng(0).standard_normal((20, 1, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", seq)
    cli = [
        sys.executable,
        "-m",
        "hypercompile.cli",
        "run",
        str(out),
        "--input",
        f"x={tmp_path}/x.npy",
    ]
    done = subprocess.run(
        [*cli, "--stream", "--out", str(tmp_path / "y.npz")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    want = np.stack(_eager_sequence(model, [(torch.from_numpy(x),) for x in seq]))
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output"], want, rtol=1e-4, atol=1e-5)
    plain = subprocess.run([*cli], capture_output=True, text=True)
    assert plain.returncode == 1 and "stream()" in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1


def test_each_task_starts_from_its_own_state(tmp_path):
    hm = EvolvingHyper()
    out = hc.build(hm, out=tmp_path / "evolve")
    m = manifest(out)
    assert len(m["graphs"]) == 1 and len(m["variants"]) == 2
    b = hc.load(out)
    adj, x = hm.example_inputs({})
    for task in (0, 1):
        model = EvolvingWeights().eval()
        model.load_state_dict(hm.generate({"task": task}))
        want = _eager_sequence(model, [(adj, x)] * 5)
        s = b.stream(task=task)
        for w in want:
            got = s.run({"adj": adj.numpy(), "x": x.numpy()})["output"]
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def test_state_no_graph_can_carry_is_refused_at_its_line(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"state_models.py:\d+: .*`calls`"):
        hc.build(CallCounter(), out=tmp_path / "c", example_inputs=(torch.randn(1, 4),))
    assert not (tmp_path / "c").exists()


def test_attributes_written_before_read_are_not_state(tmp_path):
    torch.manual_seed(2)
    model = Membrane().eval()
    out = hc.build(model, out=tmp_path / "m", example_inputs=(torch.randn(1, 4),))
    assert "state" not in next(iter(manifest(out)["graphs"].values()))
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    got = hc.load(out).run({"x": x})["output"]
    np.testing.assert_allclose(
        got, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5
    )
