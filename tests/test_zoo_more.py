"""The zoo's models for lists across paths, dropped effects, per-sample exit at batch 8 and
`.data` gates (examples/dynamic/zoo.py, entries 8-12): each builds from its unmodified forward
and agrees with eager PyTorch on 50 fresh inputs through the runtime."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hypercompile as hc
from hypercompile.frontend.materialize import flatten_outputs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "dynamic"))
import zoo  # noqa: E402

NEW = ["ShallowDeepOutputs", "RaNet", "ImageCaptioner", "BranchyNet", "BlockDropData"]


@pytest.mark.parametrize("name", NEW)
def test_new_zoo_model_builds_and_agrees_on_fresh_inputs(name, tmp_path):
    model = getattr(zoo, name)()
    bundle = hc.load(hc.build(model, out=tmp_path / name, parity_inputs=50))
    names = [i["name"] for i in bundle.inputs]
    (example,) = model.example_inputs()
    gen = torch.Generator().manual_seed(1234)  # not the build's parity inputs
    lengths = set()
    for _ in range(50):
        x = torch.randn(example.shape, generator=gen)
        with torch.no_grad():
            want = flatten_outputs(model(x))[1]
        got = list(bundle.run({names[0]: x.numpy()}).values())
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape) and g.dtype == w.numpy().dtype
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)
        lengths.add(tuple(g.shape for g in got))
    if name in ("ShallowDeepOutputs", "RaNet", "ImageCaptioner"):
        assert len(lengths) > 1  # the list's length (the caption's) followed the input
