"""The splitter on small dynamic models: which decisions reach the host, what stays static,
and which constructs it refuses (with file and line)."""

import inspect
import re

import pytest
import torch
from dyn_models import (
    CondExpr,
    DelInput,
    EarlyExit,
    Generator,
    LoopCountFromData,
    MutatesState,
    NeutralContexts,
    Prints,
    Recursive,
    Refine,
    Router,
    ShapeAsserts,
    Stack,
    StaticControl,
    TwoInputs,
)  # fmt: skip

from hypercompile import BuildError, UnsupportedModelError
from hypercompile.core.ir import Branch, Switch
from hypercompile.frontend.program import Probe, block_source, split_module


def _run_probe(model, n=40, seed=0):
    prog = split_module(model)
    probe = Probe(prog, model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(n):
            xs = [torch.randn(x.shape, generator=gen) for x in model.example_inputs()]
            got = probe.run(dict(zip(prog.inputs, xs)))
            want = model(*xs)
            got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w.to(g.dtype) if g.dtype != w.dtype else w)
    return prog, probe


def _sources(prog):
    return "\n".join(block_source(b) for b in prog.blocks.values())


def test_static_control_flow_is_evaluated_away():
    assert split_module(StaticControl()) is None


def test_early_exit_in_loop_unrolls_and_keeps_python_values_python():
    prog, probe = _run_probe(EarlyExit())
    branches = [b for b in prog.blocks.values() if isinstance(b.term, Branch)]
    assert len(branches) == 3
    text = _sources(prog)
    # thresholds[i] with the unrolled i folded to constants, the modules resolved by path
    for th in ("0.34", "0.37", "0.293"):
        assert th in text
    assert "_hc_get(__root, 'stages.2')" in text and "thresholds" not in text
    assert all(set(c.values()) != {0} for c in probe.counts.values())


def test_while_loop_counter_is_carried_by_the_host():
    prog, probe = _run_probe(Refine())
    assert prog.find_loop_headers()
    assigns = {k: v.value for b in prog.blocks.values() for k, v in b.assign.items()}
    assert assigns == {"steps": 0}  # the Python counter starts on the host
    loop_counts = [c for b, c in probe.counts.items()]
    assert any(c["then"] > 0 for c in loop_counts)


def test_dispatch_on_computed_index_becomes_a_switch():
    prog, probe = _run_probe(Router(), n=60)
    switches = [b for b in prog.blocks.values() if isinstance(b.term, Switch)]
    assert len(switches) == 1 and len(switches[0].term.cases) == 3
    (counts,) = [c for b, c in probe.counts.items()]
    assert set(counts) == {"0", "1", "2"}


def test_submodule_with_data_dependent_branch_is_inlined():
    prog, probe = _run_probe(Stack())
    assert len({b.term.cond for b in prog.blocks.values() if isinstance(b.term, Branch)}) == 3
    text = _sources(prog)
    assert "_hc_get(__root, 'layer1.fc')" in text  # the inlined GatedBlock body
    assert "torch.stack([" in text  # the appended list, as a list display


def test_several_inputs_nested_if_in_loop_in_if():
    prog, _ = _run_probe(TwoInputs())
    assert prog.inputs == ["x", "y"]
    # three decisions in the source; tail duplication may copy one into two predecessors
    assert len({b.term.cond for b in prog.blocks.values() if isinstance(b.term, Branch)}) == 3


@pytest.mark.parametrize(
    "model, construct",
    [
        (Prints, r"side effect `print`"),
        (MutatesState, r"`self.calls` is read before forward assigns it: module state"),
        (Recursive, r"recursion into Recursive.halve"),
        (Generator, r"generator \(yield\)"),
    ],
)
def test_unsupported_constructs_name_file_and_line(model, construct):
    with pytest.raises(UnsupportedModelError, match=construct) as e:
        split_module(model())
    assert re.search(r"dyn_models\.py:\d+: ", str(e.value))


def test_poisoned_list_is_an_error_only_when_read():
    class Masks(torch.nn.Module):
        def forward(self, x):
            masks = []
            if x.sum() > 0:
                masks.append(1)
            else:
                masks.append(0)
            return x * len(masks)

    with pytest.raises(UnsupportedModelError, match="`masks` differs between data-dependent"):
        split_module(Masks())


def test_data_dependent_loop_count_fails_the_build_and_leaves_nothing(tmp_path):
    import hypercompile as hc

    out = tmp_path / "b"
    with pytest.raises(
        UnsupportedModelError,
        match=r"dyn_models\.py:\d+: a loop over a "
        "data-dependent iterable",
    ):
        hc.build(LoopCountFromData(), out=out, parity_inputs=20)
    assert not out.exists() and list(tmp_path.iterdir()) == []


class Typo(torch.nn.Module):
    """Reads a missing attribute, key or index of a build-time object under a data-dependent
    branch (the static `which` picks one)."""

    def __init__(self, which):
        super().__init__()
        self.which = which
        self.scales = {"a": [1.0, 2.0]}

    def forward(self, x):
        if x.sum() > 0:
            if self.which == "attribute":
                x = x * self.nonexistent
            elif self.which == "key":
                x = x * self.scales["b"]
            else:
                x = x * self.scales["a"][2]
        return x


@pytest.mark.parametrize(
    "which, expr, error",
    [
        ("attribute", "self.nonexistent", "AttributeError: 'Typo' object has no attribute"),
        ("key", "self.scales['b']", "KeyError: 'b'"),
        ("index", "self.scales['a'][2]", "IndexError: list index out of range"),
    ],
)
def test_missing_attribute_key_or_index_names_file_and_line(which, expr, error):
    lines, start = inspect.getsourcelines(Typo.forward)
    src = expr.replace("'", '"')
    line = start + next(i for i, text in enumerate(lines) if src in text)
    with pytest.raises(UnsupportedModelError) as e:
        split_module(Typo(which))
    assert f"test_frontend_splitter.py:{line}: `{expr}` raises {error}" in str(e.value)


def test_lookups_that_need_not_run_are_left_to_run_time():
    class Guarded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def example_inputs(self):
            return (torch.randn(1, 4),)

        def forward(self, x):
            y = self.nope(x) if hasattr(self, "nope") else self.fc(x)
            for _ in x[:0]:  # a loop over a run-time iterable, here always empty
                y = y * self.nope
            if y.sum() > 0:
                y = y + len([self.nope for _ in range(0)]) + getattr(self, "nope", 1.0)
            return y

    prog, _ = _run_probe(Guarded(), n=10)
    assert len([b for b in prog.blocks.values() if isinstance(b.term, Branch)]) == 1


_HERE = r"test_frontend_splitter\.py:\d+: "


def test_del_unbinds_the_name():
    _run_probe(DelInput())

    class ReadsDeleted(torch.nn.Module):
        def forward(self, x):
            h = x * 2
            del h
            if x.sum() > 0:
                x = x + 1
            return h  # noqa: F821 - read after del, on purpose

    with pytest.raises(UnsupportedModelError, match=_HERE + r"`h` is read after `del h`"):
        split_module(ReadsDeleted())


def test_asserts_on_shapes_and_dtypes_are_checked_at_build_time():
    prog, _ = _run_probe(ShapeAsserts())
    assert prog.build_checks  # the assert after the join: nothing else in its block, not exported

    class Narrow(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                x = x + 1
            assert x.shape[1] == 7, "seven"
            return x

    prog = split_module(Narrow())
    with pytest.raises(BuildError, match=_HERE + "assertion fails at build time: seven"):
        Probe(prog, Narrow()).run({"x": torch.ones(1, 8)})
    # asserts on tensor data are host checks: tests/test_host_checks.py


def test_conditional_expression_on_data_is_an_if():
    prog, probe = _run_probe(CondExpr())
    assert len({b.term.cond for b in prog.blocks.values() if isinstance(b.term, Branch)}) == 3
    assert all(set(c.values()) != {0} and len(c) == 2 for c in probe.counts.values())


def test_with_blocks_that_change_no_value():
    _run_probe(NeutralContexts())

    class Autocast(torch.nn.Module):
        def forward(self, x):
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                x = x + 1
            if x.sum() > 0:
                x = x + 1
            return x

    with pytest.raises(UnsupportedModelError, match=_HERE + r"`with torch.autocast"):
        split_module(Autocast())


class _PolicySkips(torch.nn.Module):
    """BlockDrop in small: a policy decides up front which of four layers run."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.policy = torch.nn.Linear(6, 4)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(6, 6) for _ in range(4))

    def example_inputs(self):
        return (torch.randn(1, 6),)

    def forward(self, x):
        action = (self.policy(x) > 0).float()
        for i, layer in enumerate(self.layers):
            if action[:, i].sum() > 0:
                x = torch.relu(layer(x))
        return x


class _SpeculativeOnly(torch.nn.Module):
    """The second decision is made on one side only, or reads a value changed in between: it
    must stay where it is (moving it would compute it on paths that never did)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a = torch.nn.Linear(6, 6)

    def example_inputs(self):
        return (torch.randn(1, 6),)

    def forward(self, x):
        p = self.a(x)
        if p.sum() > 0:
            if p[:, 1].sum() > 0:  # only on this side
                return p * 2
            return p
        x = self.a(p)
        if x[:, 2].sum() > 0:  # reads x, set in between
            return x
        return -x


def test_decisions_move_up_into_the_block_that_computes_their_values():
    prog, probe = _run_probe(_PolicySkips(), n=60)
    entry = prog.blocks[prog.entry]
    decided = {b.term.cond for b in prog.blocks.values() if isinstance(b.term, Branch)}
    assert len(decided) == 4 and decided <= set(entry.outputs)  # one call decides every skip
    for b in prog.blocks.values():  # no block computes a decision but the entry
        assert not (set(b.outputs) & decided) or b.id == prog.entry
    assert all(set(c) == {"then", "else"} for c in probe.counts.values())


def test_decisions_that_would_be_speculated_stay_put():
    prog, _ = _run_probe(_SpeculativeOnly(), n=60)
    entry = prog.blocks[prog.entry]
    assert [o for o in entry.outputs if o.startswith("__p")] == [entry.term.cond]


def test_loop_entry_check_merges_into_the_block_before_the_loop():
    prog, _ = _run_probe(Refine())
    entry = prog.blocks[prog.entry]
    assert isinstance(entry.term, Branch)  # the first `while` test runs in the entry's graph
    assert entry.assign["steps"].value == 0 and "steps" not in entry.outputs
