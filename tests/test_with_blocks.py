"""`with` blocks whose manager changes values for its body (hyperlight's
`self.mainnet.using_externals(params)`, a `@contextmanager` method that sets an attribute): in a
split forward the whole statement stays in one block, so the block's graph is traced with the
manager around the body; a body with data-dependent control flow is refused with file:line.
Also hyperlight's README recipe as a user writes it: the range warning deep in its encoder
(`HyperNet.forward(**inputs)` -> `encode_input` -> `_check_tensor_range`) is a host check."""

import ast
import contextlib
import inspect
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hypercompile as hc
from hypercompile.errors import UnsupportedModelError
from hypercompile.frontend.program import Probe, split_module
from hypercompile.frontend.splitter import Unsupported

try:
    import hyperlight as hl
except ImportError:  # the hyperlight tests skip
    hl = None


# -- hyperlight's README recipe, as a user writes it (/tmp/hl/readme_model.py) -----------------
class HyperConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        main = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
        )
        modules = hl.find_modules_of_type(main, [nn.Conv2d, nn.Linear])
        self.mainnet = hl.hypernetize(main, modules=modules)
        self.hypernet = hl.HyperNet(
            input_shapes={"h": (1,)},
            output_shapes=self.mainnet.external_shapes(),
            hidden_sizes=[16],
        )
        self.example_inputs = (torch.randn(1, 2, 6, 6), torch.rand(1))

    def forward(self, x, h):
        parameters = self.hypernet(h=h)
        with self.mainnet.using_externals(parameters):
            y = self.mainnet(x)
        return y


class HyperConvNetReturnInside(HyperConvNet):
    def forward(self, x, h):
        parameters = self.hypernet(h=h)
        with self.mainnet.using_externals(parameters):
            return self.mainnet(x)


_RANGE = r"Input tensor has dimensions outside of \[0,1\]"


@pytest.mark.parametrize("cls", ["HyperConvNet", "HyperConvNetReturnInside"])
def test_hyperlight_readme_recipe_builds_and_warns_on_the_host(cls, tmp_path):
    pytest.importorskip("hyperlight")
    torch.manual_seed(0)
    model = globals()[cls]().eval()
    prog = split_module(model)
    (block,) = prog.blocks.values()  # one graph; the range check is one more output
    (check,) = block.host_checks
    assert check.kind == "warn" and check.file.endswith("encoding.py")
    assert any(isinstance(s, ast.With) for s in block.body)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager forward's, on parity inputs outside [0, 1]
        out = hc.build(model, out=tmp_path / "b", example_inputs=model.example_inputs)
    bundle = hc.load(out)
    gen = torch.Generator().manual_seed(1)
    n = 100 if cls == "HyperConvNet" else 20
    hs = [torch.tensor([0.0]), torch.tensor([1.0])]
    hs += [torch.rand(1, generator=gen) for _ in range(n - 2)]
    for h in hs:
        x = torch.randn(1, 2, 6, 6, generator=gen)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # inside [0, 1]: no warning, from either
            (got,) = bundle.run({"x": x.numpy(), "h": h.numpy()}).values()
            with torch.no_grad():
                want = model(x, h).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    for h in (1.5, -0.25):
        with pytest.warns(UserWarning, match=_RANGE) as seen:
            bundle.run({"x": x.numpy(), "h": np.array([h], np.float32)})
        (w,) = seen
        assert w.filename.endswith("encoding.py")


# -- a manager of the model's own code: a static method, a dynamic argument --------------------
class Scaled(nn.Module):
    """`self.scaled(s)` sets `self.scale = s` for its body; the body reads it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = 1.0

    @contextlib.contextmanager
    def scaled(self, s):
        old, self.scale = self.scale, s
        try:
            yield
        finally:
            self.scale = old

    def forward(self, x, s):
        if x.sum() > 0:
            x = -x
        n = 2
        with self.scaled(s):
            y = self.fc(x) * self.scale
            n = n * self.scale
            z = y + n
        if z.mean() > 0:
            return y * 2
        return z + self.scale


class ScaledAs(Scaled):
    """`as` binds what the manager yields; a list built before is extended under it."""

    @contextlib.contextmanager
    def scaled(self, s):
        old, self.scale = self.scale, s
        try:
            yield s * 2
        finally:
            self.scale = old

    def forward(self, x, s):
        outs = [x]
        if x.sum() > 0:
            x = x + 1
        with self.scaled(s) as twice:
            outs.append(self.fc(x) * twice + self.scale)
        return torch.cat(outs, dim=-1)


class ScaledBranchInside(Scaled):
    def forward(self, x, s):
        with self.scaled(s):
            y = self.fc(x)
            if y.sum() > 0:
                y = y * self.scale
        return y


def test_a_static_manager_with_a_dynamic_argument_stays_in_one_block(tmp_path):
    model = Scaled().eval()
    prog = split_module(model)
    withs = [s for b in prog.blocks.values() for s in b.body if isinstance(s, ast.With)]
    # the with is copied into both sides of the first `if` (tail duplication), kept whole
    assert len(withs) == 2 and len({ast.unparse(w) for w in withs}) == 1
    assert "__root.scale" in ast.unparse(withs[0])  # read under the manager, not folded
    assert len(prog.decisions) == 2
    gen = torch.Generator().manual_seed(2)
    probe = Probe(prog, model)
    with torch.no_grad():
        for _ in range(8):
            x, s = torch.randn(3, 4, generator=gen), torch.rand(1, generator=gen) + 0.5
            got = probe.run({"x": x, "s": s})
            torch.testing.assert_close(got, model(x, s))
    assert model.scale == 1.0  # restored on exit, by the probe too

    out = hc.build(model, out=tmp_path / "b", example_inputs=(torch.randn(3, 4), torch.ones(1)))
    assert model.scale == 1.0
    bundle = hc.load(out)
    for _ in range(10):
        x, s = torch.randn(3, 4, generator=gen), torch.rand(1, generator=gen) * 3
        (got,) = bundle.run({"x": x.numpy(), "s": s.numpy()}).values()
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x, s).numpy(), atol=1e-4, rtol=0)


def test_as_names_and_lists_under_a_managed_with():
    model = ScaledAs().eval()
    probe = Probe(split_module(model), model)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for _ in range(6):
            x, s = torch.randn(2, 4, generator=gen), torch.randn(1, generator=gen)
            torch.testing.assert_close(probe.run({"x": x, "s": s}), model(x, s))


def test_a_managed_body_with_data_dependent_control_flow_is_refused(tmp_path):
    lines, start = inspect.getsourcelines(ScaledBranchInside.forward)
    line = start + next(i for i, s in enumerate(lines) if "with self.scaled" in s)
    branch = start + next(i for i, s in enumerate(lines) if "if y.sum()" in s)
    where = rf"test_with_blocks\.py:{line}: `with self\.scaled\(s\)` is not supported"
    with pytest.raises(Unsupported, match=where) as e:
        split_module(ScaledBranchInside())
    assert f"data-dependent control flow (line {branch}: `y.sum() > 0`)" in str(e.value)
    with pytest.raises(UnsupportedModelError, match=where):
        hc.build(
            ScaledBranchInside(),
            out=tmp_path / "b",
            example_inputs=(torch.randn(3, 4), torch.ones(1)),
        )


class ScaledHead(Scaled):
    """The manager in a submodule, the `return` inside its `with`: the call's result."""

    def forward(self, x, s):
        with self.scaled(s):
            return self.fc(x) * self.scale


class Caller(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = ScaledHead()

    def forward(self, x, s):
        if x.mean() > 0:
            x = x * 2
        return self.helper(x, s, factor=3.0, extra=s)

    def helper(self, x, *rest, factor=1.0, **named):
        (s,) = rest
        if (named["extra"] < 0).any():
            warnings.warn("negative scale", stacklevel=2)
        return self.head(x, s) * factor


@pytest.mark.filterwarnings("ignore:negative scale")  # eager forward's
def test_a_return_inside_a_managed_with_of_an_inlined_call():
    model = Caller().eval()
    prog = split_module(model)
    checks = [c for b in prog.blocks.values() for c in b.host_checks]
    assert [c.message for c in checks] == ["negative scale"]  # through *args, **kwargs
    probe = Probe(prog, model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _ in range(6):
            x, s = torch.randn(2, 4, generator=gen), torch.randn(1, generator=gen)
            torch.testing.assert_close(probe.run({"x": x, "s": s}), model(x, s))
    assert model.head.scale == 1.0
