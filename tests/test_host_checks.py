"""Host checks: `assert` on tensor data, and `warnings.warn` / logging calls (alone or under a
data-dependent `if` that does nothing else), in a split forward. The host raises
ModelAssertionError with file:line for a failing assert, and issues the warning or log line
when its condition holds; a warn-only `if` does not split its block."""

# ruff: noqa: B028 - the models warn the way papers write it, without a stacklevel

import inspect
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hypercompile as hc
from hypercompile.core import ir
from hypercompile.frontend.program import Probe, split_module

logger = logging.getLogger("hc_test_monitor")
_HERE = r"test_host_checks\.py:"


def _line(cls, text):
    """The line of `text` in `cls.forward`, as the error messages give it."""
    lines, start = inspect.getsourcelines(cls.forward)
    return start + next(i for i, s in enumerate(lines) if text in s)


class RangeChecked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        assert x.abs().max() < 1e6, "input out of range"
        return torch.relu(self.fc(x))


class ExitWithAsserts(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        assert torch.isfinite(x).all(), "non-finite input"
        if x.sum() > 0:
            return self.fc(x)
        y = self.fc(x) * 2
        assert y.abs().max() < 1e3
        return y


class EncodingWarns(nn.Module):
    """hyperlight-like: the encoding warns when h leaves [0, 1], then the usual network."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, h):
        if (h < 0).any() or (h > 1).any():
            warnings.warn("h outside [0, 1]")
        return self.fc2(torch.tanh(self.fc1(h * 2 - 1)))


class Monitored(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        s = x.std()
        if s > 10:
            logger.warning("activations exploding (std > %d)", 10)
        elif s < 1e-3:
            warnings.warn("activations collapsed", RuntimeWarning)
        else:
            pass
        return self.fc(x)


class WarnsInBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if x.sum() > 0:
            warnings.warn(f"positive sum in {type(self).__name__}: {x.sum().item()}")
            x = x * 2
        return self.fc(x)


def _build(model, tmp_path, shape, **kw):
    out = hc.build(model.eval(), out=tmp_path / "b", example_inputs=(torch.rand(*shape),), **kw)
    return hc.load(out)


def _agree(model, bundle, inputs):
    with torch.no_grad():
        for x in inputs:
            (got,) = bundle.run({bundle.inputs[0]["name"]: x.numpy()}).values()
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)


def _quiet_run(bundle, x):
    """Run, returning the warnings it issued."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        bundle.run({bundle.inputs[0]["name"]: x.numpy()})
    return [str(w.message) for w in seen]


def test_an_assert_on_data_is_a_host_check_after_one_graph(tmp_path):
    model = RangeChecked()
    prog = split_module(model)
    (block,) = prog.blocks.values()
    assert isinstance(block.term, ir.Return) and not prog.decisions
    (check,) = block.host_checks
    assert (check.kind, check.message) == ("assert", "input out of range")
    assert check.line == _line(RangeChecked, "assert x.abs()")

    bundle = _build(model, tmp_path, (2, 8))
    gen = torch.Generator().manual_seed(1)
    _agree(model, bundle, [torch.randn(2, 8, generator=gen) * 100 for _ in range(20)])
    line = _line(RangeChecked, "assert x.abs()")
    with pytest.raises(hc.ModelAssertionError, match=rf"{_HERE}{line}: .*input out of range"):
        bundle.run({"x": np.full((2, 8), 1e7, np.float32)})
    assert issubclass(hc.ModelAssertionError, hc.InputError)


def test_asserts_around_an_early_exit(tmp_path):
    model = ExitWithAsserts()
    bundle = _build(model, tmp_path, (1, 8))
    gen = torch.Generator().manual_seed(2)
    _agree(model, bundle, [torch.randn(1, 8, generator=gen) for _ in range(30)])
    first, second = _line(ExitWithAsserts, "non-finite"), _line(ExitWithAsserts, "1e3")
    with pytest.raises(hc.ModelAssertionError, match=rf"{_HERE}{first}: .*non-finite input"):
        bundle.run({"x": np.full((1, 8), np.nan, np.float32)})
    msg = rf"{_HERE}{second}: assertion failed: y\.abs\(\)\.max\(\) < 1000\.0$"
    with pytest.raises(hc.ModelAssertionError, match=msg):
        bundle.run({"x": np.full((1, 8), -1e5, np.float32)})


def test_example_inputs_that_fail_the_assert_are_a_build_error(tmp_path):
    line = _line(RangeChecked, "assert x.abs()")
    msg = rf"{_HERE}{line}: assertion fails on the example inputs: input out of range"
    with pytest.raises(hc.BuildError, match=msg):
        hc.build(RangeChecked(), out=tmp_path / "b", example_inputs=(torch.full((2, 8), 1e7),))


def test_parity_inputs_an_assert_rejects_are_skipped_but_not_all(tmp_path):
    class NonNegative(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            assert (x >= 0).all(), "negative input"
            return self.fc(x.sqrt())

    class SumBounded(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            assert x.sum() > -2, "sum too small"
            return self.fc(x)

    # about one normal input in six fails it: those are left out of the parity check
    model = SumBounded()
    bundle = _build(model, tmp_path, (1, 4), parity_inputs=30)
    (variant,) = bundle.manifest.variants
    assert 15 < variant.parity["onnxruntime"].inputs < 31
    _agree(model, bundle, [torch.rand(1, 4) for _ in range(5)])

    model = NonNegative()
    # random parity inputs are normal: every one has a negative entry
    with pytest.raises(hc.BuildError, match="rejects every parity input but the example"):
        _build(model, tmp_path, (1, 4), parity_inputs=5)


@pytest.mark.filterwarnings("ignore:h outside")  # eager forward's, during the build
def test_a_warning_only_if_runs_on_the_host_without_splitting(tmp_path):
    model = EncodingWarns()
    prog = split_module(model)
    (block,) = prog.blocks.values()  # one graph: the condition is one more output
    assert not prog.decisions
    (check,) = block.host_checks
    assert (check.kind, check.category, check.message) == (
        "warn",
        "UserWarning",
        "h outside [0, 1]",
    )

    bundle = _build(model, tmp_path, (4, 6))
    gen = torch.Generator().manual_seed(3)
    inside = [torch.rand(4, 6, generator=gen) for _ in range(10)]
    outside = [torch.randn(4, 6, generator=gen) * 2 for _ in range(10)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _agree(model, bundle, inside + outside)
    assert _quiet_run(bundle, inside[0]) == []
    with warnings.catch_warnings(record=True) as filtered:  # filters by module apply
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module=__name__)
        bundle.run({"h": outside[0].numpy()})
    assert not filtered
    with pytest.warns(UserWarning, match=r"h outside \[0, 1\]") as seen:
        bundle.run({"h": outside[0].numpy()})
    (w,) = seen
    assert w.filename.endswith("test_host_checks.py")
    assert w.lineno == _line(EncodingWarns, "warnings.warn")


@pytest.mark.filterwarnings("ignore:activations collapsed")
def test_elif_chains_and_logging_calls(tmp_path, caplog):
    model = Monitored()
    prog = split_module(model)
    assert len(prog.blocks) == 1 and not prog.decisions
    kinds = [(c.kind, c.message) for c in prog.blocks[prog.entry].host_checks]
    assert kinds == [
        ("log", "activations exploding (std > 10)"),
        ("warn", "activations collapsed"),
    ]
    bundle = _build(model, tmp_path, (2, 8))
    gen = torch.Generator().manual_seed(4)
    normal = torch.randn(2, 8, generator=gen)
    _agree(model, bundle, [normal])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hc_test_monitor"):
        assert _quiet_run(bundle, normal) == []
        assert not _records(caplog)
        assert _quiet_run(bundle, normal * 1000) == []
    (rec,) = _records(caplog)
    assert (rec.name, rec.levelno) == ("hc_test_monitor", logging.WARNING)
    assert rec.getMessage() == "activations exploding (std > 10)"
    assert rec.lineno == _line(Monitored, "logger.warning")
    with pytest.warns(RuntimeWarning, match="activations collapsed"):
        bundle.run({"x": np.zeros((2, 8), np.float32)})


def _records(caplog):
    return [r for r in caplog.records if r.name == "hc_test_monitor"]


@pytest.mark.filterwarnings("ignore:positive sum")  # eager forward's, during the build
def test_a_warning_inside_a_branch_with_other_work(tmp_path):
    model = WarnsInBranch()
    prog = split_module(model)
    assert len(prog.decisions) == 1  # a real branch: it also doubles x
    (check,) = [c for b in prog.blocks.values() for c in b.host_checks]
    assert check.value is None  # issued whenever its block runs
    # the build-time parts of the f-string are filled in, the data-dependent one kept as source
    assert check.message == "positive sum in WarnsInBranch: {x.sum().item()}"
    bundle = _build(model, tmp_path, (1, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _agree(model, bundle, [torch.randn(1, 8) for _ in range(10)])
    assert _quiet_run(bundle, -torch.ones(1, 8)) == []
    assert _quiet_run(bundle, torch.ones(1, 8)) == [check.message]


def test_checks_in_a_submodule_are_inlined():
    class Encoder(nn.Module):
        def forward(self, h):
            if (h < 0).any():
                warnings.warn("negative h")
            assert h.max() < 100, "h too large"
            return h.clamp(min=0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.fc = Encoder(), nn.Linear(4, 2)

        def forward(self, h):
            return self.fc(self.enc(h))

    prog = split_module(Net())
    (block,) = prog.blocks.values()
    assert [c.kind for c in block.host_checks] == ["warn", "assert"]
    probe = Probe(prog, Net())
    probe.run({"h": -torch.ones(1, 4)})
    assert list(probe.notified.values()) == [1]  # counted, not issued, at build time
    with pytest.raises(Exception, match="h too large"):
        probe.run({"h": torch.full((1, 4), 1e3)})


# -- the IR: host checks in the manifest ------------------------------------------------------
class _Host(ir.Interpreter):
    """The interpreter with no graphs: host literals only."""

    def bind(self, block):
        return None

    def literal(self, lit):
        return ir.ArrayLiterals()(lit)


def _program(*checks, ok=True):
    block = ir.Block(
        0,
        ir.Return(("ok",)),
        assign={"ok": ir.Literal.of(ok)},
        host_checks=list(checks),
    )
    return ir.Program(entry=0, inputs=[], blocks={0: block})


def test_host_checks_round_trip_and_run_torch_free():
    a = ir.HostCheck("assert", "ok", "must hold", "m.py", 3)
    w = ir.HostCheck("warn", "ok", "careful", "m.py", 4, category="RuntimeWarning")
    lg = ir.HostCheck("log", None, "noted", "m.py", 5, logger="hc_test_ir", level=logging.INFO)
    prog = _program(a, w, lg)
    again = ir.Program.from_json(prog.to_json())
    assert again.blocks[0].host_checks == [a, w, lg]
    with pytest.warns(RuntimeWarning, match="careful"):
        _Host(again).run({})
    with pytest.raises(hc.ModelAssertionError, match=r"^m\.py:3: assertion failed: must hold$"):
        _Host(_program(a, ok=False)).run({})
    old = _program().to_json()  # a bundle from before host checks: no field at all
    assert "host_checks" not in old["blocks"][0]
    assert ir.Program.from_json(old).blocks[0].host_checks == []


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(surprise=1), r"host_checks\[0\]: unknown field 'surprise'"),
        (lambda c: c.update(kind="raise"), r"kind 'raise' is not one of assert, warn, log"),
        (lambda c: c.update(value=None), r"an assert checks a value"),
        (lambda c: c.update(level=30), r"unknown field 'level'"),  # a log field on an assert
        (lambda c: c.update(line="3"), r"\.line has the wrong type"),
        (lambda c: c.pop("message"), r"missing field 'message'"),
        (
            lambda c: c.update(kind="warn", category="os.system"),
            r"category 'os\.system' is not a warning class",
        ),
        (
            lambda c: c.update(kind="log", logger="x", level=10**6),
            r"level 1000000 is not a logging level",
        ),
    ],
)
def test_malformed_host_checks_are_refused(edit, message):
    data = _program(ir.HostCheck("assert", "ok", "m", "m.py", 3)).to_json()
    edit(data["blocks"][0]["host_checks"][0])
    with pytest.raises(hc.BundleError, match=message):
        ir.Program.from_json(data)
