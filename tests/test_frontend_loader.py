import pytest
import torch
from conftest import MODELS, ref

from hypercompile import ModelRefError
from hypercompile.frontend.loader import resolve_model
from hypercompile.protocol import StaticModel, is_hypermodel


def test_file_reference_to_a_hypermodel_class_is_instantiated():
    hm = resolve_model(ref("TinyHyper"))
    assert is_hypermodel(hm) and len(list(hm.conditions())) == 5


def test_file_reference_to_a_factory_is_called():
    assert len(resolve_model(ref("tiny_hyper_50")).conditions()) == 50


def test_module_reference(monkeypatch):
    monkeypatch.syspath_prepend(str(MODELS.parent))
    hm = resolve_model("models:Widths")
    assert [c["width"] for c in hm.conditions()] == [4, 8, 16]


def test_plain_module_becomes_one_variant():
    hm = resolve_model(ref("PlainCNN"))
    assert isinstance(hm, StaticModel) and hm.conditions() == [{}]
    assert hm.example_inputs({})[0].shape == (1, 3, 16, 16)


def test_plain_module_instance_with_explicit_inputs():
    m = torch.nn.Linear(3, 2).train()
    hm = resolve_model(m, example_inputs=(torch.randn(1, 3),))
    target = hm.build({})
    assert target is not m and not target.training  # a copy in eval mode
    assert torch.equal(target.weight, m.weight)
    assert m.training  # the user's module is left as it was


@pytest.mark.parametrize(
    "bad, message",
    [
        ("no_colon_here", "must look like"),
        ("missing_file.py:X", "does not exist"),
        (f"{MODELS}:Nope", "has no attribute 'Nope'"),
        ("no_such_module_xyz:X", "cannot import module"),
        (f"{MODELS}:NoExamples", "needs example inputs"),
        (f"{MODELS}:__doc__", "not a HyperModel"),
    ],
)
def test_bad_references_name_the_problem(bad, message):
    with pytest.raises(ModelRefError, match=message):
        resolve_model(bad)
