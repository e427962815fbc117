import numpy as np
import pytest
import torch
from models import MissingWeights, TinyHyper, Widths
from torch import nn

from hypercompile import BuildError
from hypercompile.frontend.materialize import architecture_signature, materialize
from hypercompile.runtime.checks import parity


def test_materialize_loads_generated_weights_and_matches_reference():
    hm = TinyHyper()
    target = materialize(hm, {"task": 1})
    assert not target.training
    (x,) = hm.example_inputs({"task": 1})
    with torch.no_grad():
        torch.testing.assert_close(target(x), hm.reference({"task": 1}, x))


def test_missing_generated_tensor_is_named():
    with pytest.raises(BuildError, match=r"variant task=0: .*missing 2\.bias"):
        materialize(MissingWeights(), {"task": 0})


def test_extra_and_misshaped_tensors_are_named():
    class Extra(TinyHyper):
        def generate(self, cond):
            return super().generate(cond) | {"ghost": torch.zeros(1)}

    class Misshaped(TinyHyper):
        def generate(self, cond):
            return super().generate(cond) | {"2.bias": torch.zeros(5)}

    with pytest.raises(BuildError, match="unexpected ghost"):
        materialize(Extra(), {"task": 0})
    with pytest.raises(BuildError, match=r"2\.bias has shape \(5,\), target wants \(4,\)"):
        materialize(Misshaped(), {"task": 0})


def test_signature_same_for_tasks_and_different_for_widths():
    hm, x = TinyHyper(), (torch.randn(1, 8),)
    sigs = {architecture_signature(materialize(hm, c), x) for c in hm.conditions()}
    assert len(sigs) == 1
    w = Widths()
    sigs = {architecture_signature(materialize(w, c), (torch.randn(1, 6),)) for c in w.conditions()}
    assert len(sigs) == 3


def test_signature_sees_hyperparameters_outside_the_weights():
    class Scaled(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.fc, self.scale = nn.Linear(2, 2), scale

        def forward(self, x):
            return self.fc(x) * self.scale

    x = (torch.randn(1, 2),)
    assert architecture_signature(Scaled(2.0), x) != architecture_signature(Scaled(3.0), x)


def test_parity_metrics():
    want = [np.array([1.0, -2.0], np.float32)]
    assert parity([np.array([1.0, -2.0], np.float32)], want) == (0.0, 0.0)
    a, r = parity([np.array([1.1, -2.0], np.float32)], want)
    assert a == pytest.approx(0.1, rel=1e-5) and r == pytest.approx(0.05, rel=1e-5)
    assert parity([np.zeros(3, np.float32)], want)[0] == float("inf")  # shape mismatch
    assert parity([np.array([np.nan, -2.0], np.float32)], want)[1] == float("inf")
