"""The corpus: one small model per construct users bring (tests/corpus_models.py), built
unmodified and compared with eager PyTorch on 100 fresh inputs, some with NaN (their positions
must agree), warnings included. Library models (hyperlight, OFA, snntorch) are in
test_adapters_libs.py; stateful models in test_stream.py."""

import subprocess
import sys
import warnings

import corpus_models
import numpy as np
import pytest
import torch

import hypercompile as hc
from hypercompile.errors import StateError, UnsupportedModelError

FRESH = 100

STATIC = {  # model -> example input shapes without the batch
    "RankChecked": [(6,)],
    "SkipGate": [(6,)],
    "QuietBlocks": [(6,)],
    "Choose": [(6,)],
    "WarnsOnRange": [(6,)],
    "ImageAndMeta": [(3, 5, 5), (2,)],
    "PHMLinear": [(6,)],
}


def _fresh(b, shapes, gen, i):
    """Fresh inputs at the bundle's batch (2 where it is dynamic), scaled so that gates and
    range checks go both ways; every 20th holds a NaN."""
    batch = 2 if any(d == "batch" for s in b.inputs for d in s["shape"]) else 1
    xs = [2 * torch.randn(batch, *s, generator=gen) for s in shapes]
    if i % 20 == 19:
        xs[0].view(-1)[i % xs[0].numel()] = float("nan")
    return xs


def _eager(model, xs):
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        y = model(*xs)
    return y.numpy(), [str(w.message) for w in caught]


def _assert_same(got, want, where):
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{where}: NaN positions differ"
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-5, err_msg=where)


@pytest.mark.parametrize("name", sorted(STATIC))
def test_model_builds_unmodified_and_agrees_on_fresh_inputs(name, tmp_path):
    torch.manual_seed(0)
    model = getattr(corpus_models, name)().eval()
    shapes = STATIC[name]
    example = tuple(torch.randn(1, *s) for s in shapes)
    b = hc.load(hc.build(model, out=tmp_path / "b", example_inputs=example))
    gen = torch.Generator().manual_seed(11)
    warned = 0
    for i in range(FRESH):
        xs = _fresh(b, shapes, gen, i)
        want, want_warnings = _eager(model, xs)
        feeds = {s["name"]: x.numpy() for s, x in zip(b.inputs, xs)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (got,) = b.run(feeds).values()
        _assert_same(got, want, f"{name}, input {i}")
        assert [str(w.message) for w in caught] == want_warnings, f"{name}, input {i}"
        warned += bool(want_warnings)
    if name == "WarnsOnRange":
        assert 0 < warned < FRESH  # the check went both ways


def test_state_kept_between_calls_streams_and_plain_run_refuses(tmp_path):
    torch.manual_seed(0)
    model = corpus_models.RunningCenter().eval()
    b = hc.load(hc.build(model, out=tmp_path / "b", example_inputs=(torch.randn(1, 6),)))
    gen = torch.Generator().manual_seed(12)
    with pytest.raises(StateError, match=r"stream\(\)"):
        b.run({"x": np.ones((1, 6), np.float32)})
    for _ in range(2):  # two streams, each from the initial state, each like a fresh model
        eager, s = corpus_models.RunningCenter(), b.stream()
        eager.load_state_dict(model.state_dict())
        for i in range(25):
            xs = _fresh(b, [(6,)], gen, i)
            want, _ = _eager(eager, xs)
            _assert_same(s.run({"x": xs[0].numpy()})["output"], want, f"call {i}")


def test_state_no_graph_can_carry_is_refused_at_its_line(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"corpus_models.py:\d+: .*`steps`"):
        hc.build(
            corpus_models.CountsCalls(), out=tmp_path / "b", example_inputs=(torch.ones(1, 6),)
        )


def test_a_plain_module_gets_its_inputs_on_the_command_line(tmp_path):
    ref = f"{corpus_models.__file__}:NoExamples"
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "hypercompile.cli", "build", ref, "--input", "x=1x3x8x8"]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    b = hc.load(out)
    # the model was made in the CLI's process: give a fresh one the weights the bundle stores
    model = corpus_models.NoExamples().eval()
    (v,) = b.manifest.variants
    stored = b.weights(v)
    model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in stored.items()})
    gen = torch.Generator().manual_seed(13)
    for i in range(FRESH):
        xs = _fresh(b, [(3, 8, 8)], gen, i)
        _assert_same(b.run({"x": xs[0].numpy()})["output"], _eager(model, xs)[0], f"input {i}")
