"""A block that writes into a tensor of an earlier block in place (`out[hard] = ...`) hands the
changed tensor on: without it the write would be lost and the block would have no outputs."""

import numpy as np
import pytest
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


@pytest.mark.parametrize("name, width", [("PerSampleExit", 8), ("TokenMoE", 16)])
def test_data_dependent_programs_run_at_any_batch(tmp_path, name, width):
    """Built from inputs at one batch, the program also answers batches it was never shown:
    the build probes it at a second size, so every block's batch dimension exports dynamic."""
    import dyn_models

    torch.manual_seed(0)
    model = getattr(dyn_models, name)().eval()
    b = hc.load(hc.build(model, out=tmp_path / "b", parity_inputs=20))
    (v,) = b.manifest.variants
    program = b.manifest.programs[v.program]
    assert program.fixed_batch is None
    assert [s.shape for s in program.input_specs] == [["batch", width]]
    gen = torch.Generator().manual_seed(11)
    for n in (1, 2, 5, 17, 64):
        for i in range(6):
            x = torch.randn(n, width, generator=gen) * (0.2 if i % 2 else 5)
            with torch.no_grad():
                want = model(x).numpy()
            got = b.run({"x": x.numpy()})["output"]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_program_that_reads_one_sample_keeps_its_batch_and_says_why(tmp_path):
    """`int(idx)` of a routing decision takes one sample: forward refuses a batch of 3, so the
    program keeps the example's batch, and a call at another batch is told why."""
    from dyn_models import Router

    b = hc.load(hc.build(Router(), out=tmp_path / "b", parity_inputs=20))
    (v,) = b.manifest.variants
    program = b.manifest.programs[v.program]
    assert "forward does not take a batch of 3" in program.fixed_batch
    assert program.input_specs[0].shape == [1, 5]
    with pytest.raises(hc.InputError, match=r"takes batch 1 only: forward does not take"):
        b.run({"x": np.zeros((4, 5), np.float32)})
