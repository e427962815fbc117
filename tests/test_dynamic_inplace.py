"""A block that writes into a tensor of an earlier block in place (`out[hard] = ...`) hands the
changed tensor on: without it the write would be lost and the block would have no outputs."""

import numpy as np
import torch
from dyn_models import PerSampleExit

import hypercompile as hc


def test_per_sample_exit_writes_back_in_place(tmp_path):
    torch.manual_seed(0)
    model = PerSampleExit().eval()
    b = hc.load(hc.build(model, out=tmp_path / "b", parity_inputs=20))
    (v,) = b.manifest.variants
    assert v.program is not None and not v.untested  # both sides of `hard.any()` were taken
    gen = torch.Generator().manual_seed(9)
    for i in range(40):
        x = torch.randn(8, 8, generator=gen) * (0.2 if i % 2 else 5)
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(b.run({"x": x.numpy()})["output"], want, rtol=1e-4, atol=1e-5)


def test_token_dispatch_moe_runs_experts_on_their_tokens(tmp_path):
    from dyn_models import TokenMoE

    torch.manual_seed(0)
    model = TokenMoE().eval()
    b = hc.load(hc.build(model, out=tmp_path / "b", parity_inputs=20))
    (v,) = b.manifest.variants
    assert v.program is not None and not v.untested  # every expert both used and idle
    gen = torch.Generator().manual_seed(10)
    for _ in range(40):
        x = torch.randn(12, 16, generator=gen) * 3
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(b.run({"x": x.numpy()})["output"], want, rtol=1e-4, atol=1e-5)
