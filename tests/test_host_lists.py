"""Issue 12: lists whose length depends on the path (host lists), effects that cannot reach an
answer (dropped, with a note), and tensors made in forward; each model builds and agrees with
eager forward on fresh inputs through the runtime."""

import json

import numpy as np
import pytest
import torch
from list_models import (
    AnytimeExits,
    Captioner,
    ExitConfidences,
    MadeConstants,
    MasksAndLogits,
    Policy,
    RefineTrace,
)
from torch import nn

import hypercompile as hc
from hypercompile.core import ir
from hypercompile.errors import BundleError, HypercompileError, UnsupportedModelError
from hypercompile.frontend.materialize import flatten_outputs


def _build(model, path, n=40):
    hc.build(model, out=path, example_inputs=model.example_inputs(), parity_inputs=n)
    return hc.load(path), json.loads((path / "manifest.json").read_text())


def _agree(model, bundle, n=60, seed=3):
    gen = torch.Generator().manual_seed(seed)
    names = [i["name"] for i in bundle.inputs]
    counts = set()
    for _ in range(n):
        xs = [torch.randn(x.shape, generator=gen) for x in model.example_inputs()]
        with torch.no_grad():
            want = flatten_outputs(model(*xs))[1]
        got = list(bundle.run({k: x.numpy() for k, x in zip(names, xs)}).values())
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)
        counts.add(len(got))
    return counts


@pytest.mark.parametrize(
    "model_cls, varying",
    [(ExitConfidences, False), (AnytimeExits, True), (RefineTrace, False), (MasksAndLogits, True)],
)
def test_lists_across_paths_build_and_agree(model_cls, varying, tmp_path):
    model = model_cls()
    bundle, m = _build(model, tmp_path / "b")
    (program,) = m["programs"].values()
    assert any("lists" in b for b in program["blocks"])  # the host holds a list
    assert program.get("outputs_vary", False) is varying
    counts = _agree(model, bundle)
    if varying:  # a returned list: as many outputs as the path gave
        assert len(counts) > 1


def test_effects_that_reach_no_answer_are_dropped_with_a_note(tmp_path):
    for model, what in [(Captioner(), "flatten_parameters"), (Policy(), "saved_actions")]:
        bundle, m = _build(model, tmp_path / what, n=20)
        (program,) = m["programs"].values()
        (note,) = program["dropped"]
        assert what in note and "list_models.py:" in note
        _agree(model, bundle, n=20)


class _ReadsSavedInHelper(nn.Module):
    """Appends to a list attribute that a method forward calls reads back."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.saved = []

    def count(self):
        return len(self.saved)

    def forward(self, x):
        self.saved.append(x)
        if x.sum() > 0:
            x = self.fc(x)
        return x * self.count()


def test_effect_that_may_reach_an_answer_is_refused_with_its_line():
    from hypercompile.frontend.program import split_module

    with pytest.raises(UnsupportedModelError, match=r"test_host_lists.py:\d+: .*self.saved"):
        split_module(_ReadsSavedInHelper())


def test_tensors_made_in_forward_are_constants(tmp_path):
    model = MadeConstants()
    bundle, m = _build(model, tmp_path / "c", n=20)
    (program,) = m["programs"].values()
    assert program["inputs"] == ["x"]  # the constants are no inputs of the program
    _agree(model, bundle, n=20)


class _SumsOuts(nn.Module):
    """Grows a list under a data-dependent gate, then reads it with `sum`."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        outs = []
        for _ in range(3):
            x = self.fc(x)
            if x.sum() > 0:
                outs.append(x)
        return sum(outs)


class _AliasesOuts(_SumsOuts):
    def forward(self, x):
        outs = []
        if x.sum() > 0:
            outs.append(x)
        other = outs
        other.append(x * 2)
        return torch.stack(outs)


@pytest.mark.parametrize(
    "model_cls, message",
    [
        (_SumsOuts, r"test_host_lists.py:\d+: `outs` is a list whose length depends on a "
         r"data-dependent path; `sum\(outs\)` reads it"),
        (_AliasesOuts, r"test_host_lists.py:\d+: `outs` is a list whose length depends .*"
         r"a second name for it"),
    ],
)  # fmt: skip
def test_other_uses_of_a_path_list_are_refused_with_the_users_name(model_cls, message):
    from hypercompile.frontend.program import split_module

    with pytest.raises(UnsupportedModelError, match=message) as info:
        split_module(model_cls())
    assert "__" not in str(info.value)


def test_structure_change_names_the_users_variable_and_line(tmp_path):
    class Changes(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            if x.sum() > 0:
                y = [y, y]
            return y[0] + 1

    with pytest.raises(HypercompileError) as info:
        hc.build(Changes(), out=tmp_path / "s", example_inputs=(torch.randn(1, 4),))
    text = str(info.value)
    assert "test_host_lists.py:" in text and "`y`" in text and "__" not in text


def test_list_ops_round_trip_and_bad_ones_are_refused():
    ops = [
        ir.ListOp("list", "xs", parts=("a", ("ys", None, -1)), where="m.py:3"),
        ir.ListOp("get", "z", "xs", index=-1),
        ir.ListOp("stack", "s", "xs", index=1),
        ir.ListOp("len", "n", "xs"),
    ]
    prog = ir.Program(0, ["a", "ys"], {0: ir.Block(0, ir.Return(("xs", "s")), lists=ops)})
    back = ir.Program.from_json(json.loads(json.dumps(prog.to_json())))
    assert back.blocks[0].lists == ops
    for bad in [{"op": "pop", "dst": "x"}, {"op": "list", "dst": "x", "parts": [["a", 1]]},
                {"op": "get", "dst": "x", "src": "a"}, {"op": "len", "dst": "x", "src": "a",
                                                       "index": 0}]:  # fmt: skip
        data = prog.to_json()
        data["blocks"][0]["lists"] = [bad]
        with pytest.raises(BundleError, match="lists"):
            ir.Program.from_json(data)


def test_list_ops_run_on_numpy():
    class Run(ir.Interpreter):
        def bind(self, block):
            return None

        def literal(self, lit):
            return ir.ArrayLiterals()(lit)

    a, b = np.ones(2, np.float32), np.zeros(2, np.float32)
    ops = [
        ir.ListOp("list", "xs", parts=("a", "b", "a")),
        ir.ListOp("list", "xs", parts=(("xs", None, 1), ("xs", 2, None))),  # del xs[1]
        ir.ListOp("stack", "s", "xs", index=0),
        ir.ListOp("cat", "c", "xs", index=0),
        ir.ListOp("len", "n", "xs"),
        ir.ListOp("get", "g", "xs", index=5, where="m.py:7"),
    ]
    prog = ir.Program(0, ["a", "b"], {0: ir.Block(0, ir.Return(("s",)), lists=ops)})
    with pytest.raises(HypercompileError, match="m.py:7: .*index 5 is out of range for 2"):
        Run(prog).run({"a": a, "b": b})
    prog.blocks[0].lists = ops[:-1]
    env = {"a": a, "b": b}
    Run(prog).run(env)
    assert env["s"].shape == (2, 2) and env["c"].shape == (4,) and int(env["n"]) == 2
