"""Small dynamic models for the splitter tests, written the ordinary way (not for a compiler).
Each builds in a few seconds; thresholds make every branch reachable on random inputs."""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


class EarlyExit(nn.Module):
    """Early return inside a loop over a ModuleList (Shallow-Deep style), two outputs."""

    def __init__(self):
        super().__init__()
        _seeded(0)
        self.stages = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.heads = nn.ModuleList([nn.Linear(8, 4) for _ in range(3)])
        self.thresholds = [0.34, 0.37, 0.293]
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 8),)

    def forward(self, x):
        for i, (stage, head) in enumerate(zip(self.stages, self.heads)):
            x = torch.tanh(stage(x))
            logits = head(x)
            if F.softmax(logits, dim=1).max() > self.thresholds[i]:
                return logits, torch.tensor(i)
        return logits, torch.tensor(len(self.stages))


class Refine(nn.Module):
    """A data-dependent while loop with a Python counter in its condition."""

    def __init__(self):
        super().__init__()
        _seeded(1)
        self.step = nn.Linear(6, 6)
        self.max_steps = 6

    def example_inputs(self):
        return (torch.randn(1, 6),)

    def forward(self, x):
        steps = 0
        while x.norm() > 1.0 and steps < self.max_steps:
            x = 0.7 * x + 0.1 * torch.tanh(self.step(x))
            steps += 1
        return x * steps


class Halving(nn.Module):
    """Loops as long as the data says: used to check the runtime's iteration bound."""

    def example_inputs(self):
        return (torch.rand(1, 4) * 8,)

    def forward(self, x):
        while x.max() > 1.0:
            x = x * 0.5
        return x


class Router(nn.Module):
    """Top-1 routing: `self.experts[int(idx)](x)`."""

    def __init__(self):
        super().__init__()
        _seeded(2)
        self.router = nn.Linear(5, 3)
        self.experts = nn.ModuleList([nn.Linear(5, 5) for _ in range(3)])
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 5),)

    def forward(self, x):
        idx = self.router(x).argmax(dim=1)
        return self.experts[int(idx)](x) + x


class GatedBlock(nn.Module):
    """A submodule with its own data-dependent branch: inlined into the caller's program."""

    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(n, n)
        self.gate = nn.Linear(n, 1)

    def forward(self, x):
        if torch.sigmoid(self.gate(x)).item() > 0.5:
            return x + torch.relu(self.fc(x))
        return x


class Stack(nn.Module):
    """Inlined gated submodules, `getattr` with formatted names, a list built with append."""

    def __init__(self):
        super().__init__()
        _seeded(3)
        self.num_layers = 3
        for i in range(self.num_layers):
            setattr(self, "layer{}".format(i), GatedBlock(6))
        self.out = nn.Linear(6, 2)
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 6),)

    def forward(self, x):
        feats = []
        for i in range(self.num_layers):
            x = getattr(self, "layer{}".format(i))(x)
            feats.append(x.sum(dim=1))
        return self.out(x), torch.stack(feats, dim=1)


class TwoInputs(nn.Module):
    """Several inputs; a branch on one of them; a nested if inside a static loop."""

    def __init__(self):
        super().__init__()
        _seeded(4)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 4), torch.randn(1, 4))

    def forward(self, x, y):
        if y.mean() > 0:
            for _ in range(2):
                x = self.a(x)
                if x.sum() > -0.7:
                    x = torch.relu(x)
        else:
            x = self.b(x) - y
        return x


class StaticControl(nn.Module):
    """Control flow that depends only on the module: builds as one static graph."""

    def __init__(self):
        super().__init__()
        _seeded(5)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.use_skip = True

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        for i, blk in enumerate(self.blocks):
            if self.use_skip and i > 0:
                x = x + blk(x)
            else:
                x = blk(x)
        return x


# -- constructs that must fail the build, naming file and line ------------------------------------
class Prints(nn.Module):
    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        if x.sum() > 0:
            print("positive")
        return x


class MutatesState(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        if x.sum() > 0:
            self.calls = self.calls + 1
        return x * 2


class Recursive(nn.Module):
    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        return self.halve(x)

    def halve(self, x):
        if x.abs().max() > 1:
            return self.halve(x / 2)
        return x


class Generator(nn.Module):
    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        for i in range(2):
            yield x * i


class LoopCountFromData(nn.Module):
    """How many times the loop body (with a branch inside) runs comes from tensor values."""

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        n = int((x > 0).sum())
        for i in range(n):
            if x[0, i] > 0.5:
                x = x * 2
        return x


class StatefulGate(nn.Module):
    """SkipNet's recurrent gate as its authors wrote it: the LSTM state lives in `self.hidden`."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 4)
        self.proj = nn.Linear(4, 1)
        self.hidden = None

    def init_hidden(self, batch_size):
        return (torch.zeros(1, batch_size, 4), torch.zeros(1, batch_size, 4))

    def forward(self, x):
        out, self.hidden = self.rnn(x.view(1, x.size(0), -1), self.hidden)
        return torch.sigmoid(self.proj(out.squeeze(0)))


class RecurrentSkip(nn.Module):
    def __init__(self):
        super().__init__()
        _seeded(6)
        self.control = StatefulGate()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        self.control.hidden = self.control.init_hidden(x.size(0))
        for layer in self.layers:
            if self.control(x) > 0.5:
                x = torch.relu(layer(x))
        return x


class LstmHead(nn.Module):
    """A batch-first LSTM over 3 steps, then a linear head (no control flow)."""

    def __init__(self):
        super().__init__()
        _seeded(7)
        self.lstm = nn.LSTM(6, 5, batch_first=True)
        self.head = nn.Linear(5, 2)
        self.eval()

    def example_inputs(self):
        return (torch.randn(2, 3, 6),)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        return self.head(y[:, -1] + h[0] + c[0])


class SharedLayer(nn.Module):
    """ALBERT-style weight sharing: one gated layer applied three times; the unrolled loop
    calls the same code with the same weights and shapes from several blocks."""

    def __init__(self):
        super().__init__()
        _seeded(8)
        self.layer = GatedBlock(6)
        self.out = nn.Linear(6, 2)
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 6),)

    def forward(self, x):
        for _ in range(3):
            x = self.layer(x)
        return self.out(x)


class _Idiom(nn.Module):
    """Two layers and a gate on the input's sign (about half of random inputs take it)."""

    def __init__(self):
        super().__init__()
        _seeded(12)
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 8),)


class DelInput(_Idiom):
    """`del x` once the input is no longer needed (SkipNet style)."""

    def forward(self, x):
        gate = x.sum()
        h = self.a(x)
        del x
        if gate > 0:
            h = self.b(h)
        return h


class ShapeAsserts(_Idiom):
    """Asserts on ranks, dtypes and non-batch dims, before and after a data-dependent branch."""

    def forward(self, x):
        assert x.dim() == 2
        assert x.shape[1] == 8, "expects 8 features"
        assert x.ndim == 2 and x.dtype == torch.float32
        assert isinstance(x, torch.Tensor) and not x.is_complex()
        h = self.a(x)
        if x.sum() > 0:
            h = self.b(h)
        assert h.size(-1) == 8
        return h


class CondExpr(_Idiom):
    """Conditional expressions with data-dependent tests, one nested in another's test."""

    def forward(self, x):
        h = self.a(x)
        y = self.b(h) if x.sum() > 0 else h * 2
        z = y + 1 if (x.mean() if x[0, 0] > 0 else -x.mean()) > 0 else y - 1
        return z


class NeutralContexts(_Idiom):
    """`with` blocks whose context managers change no value."""

    def forward(self, x):
        with torch.autocast(device_type="cpu", enabled=False):
            h = self.a(x)
        with torch.inference_mode(), torch.enable_grad():
            h = h + 1
        with warnings.catch_warnings(), contextlib.nullcontext():
            if x.sum() > 0:
                h = self.b(h)
        with torch.no_grad(), torch.set_grad_enabled(False):
            h = h * 2
        return h


class PerSampleExit(nn.Module):
    """Per-sample early exit at batch 8 (BranchyNet style): confident samples leave after the
    first classifier; the rest go on, and their answers are written back in place
    (`out[hard] = ...`), a tensor of data-dependent size in between."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.exit1 = nn.Linear(16, 4)
        self.stage2 = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.exit2 = nn.Linear(16, 4)
        self.example_inputs = (torch.randn(8, 8),)

    def forward(self, x):
        h = self.stage1(x)
        logits = self.exit1(h)
        conf = torch.softmax(logits, dim=1).max(dim=1).values
        out = logits.clone()
        hard = conf < 0.5
        if hard.any():
            h2 = self.stage2(h[hard])
            out[hard] = self.exit2(h2)
        return out

    def sample_inputs(self, cond, n):
        gen = torch.Generator().manual_seed(5)  # small inputs: unsure; large: all confident
        return [(torch.randn(8, 8, generator=gen) * (0.2 if i % 2 else 20),) for i in range(n)]


class DataGate(nn.Module):
    """DyCL's BlockDrop idiom: a branch on `action.data` (the exporter crashes on `.data`)."""

    def __init__(self):
        super().__init__()
        _seeded(20)
        self.gate = nn.Linear(4, 1)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        action = (self.gate(x) > 0).float()
        if action.data.sum() == 0:
            return self.a(x)
        return self.b(x) * action.data[:, :1]


class _CrashOnExport(nn.Module):
    """Fine when run; kills its process when torch.export traces it (a native crash)."""

    def forward(self, x):
        if torch.compiler.is_exporting():
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        return x * 2


class CrashingExport(nn.Module):
    """A gate, then a block whose export crashes the exporter."""

    def __init__(self):
        super().__init__()
        _seeded(21)
        self.a = nn.Linear(4, 4)
        self.crash = _CrashOnExport()
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            x = self.crash(x)
        return x + 1


class ShapeShift(nn.Module):
    """A value that is a tuple on one path and a tensor on the other."""

    def __init__(self):
        super().__init__()
        _seeded(22)
        self.a = nn.Linear(4, 4)
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        if x.sum() > 0:
            y = (self.a(x), x)
        else:
            y = x
        return y


class _RefuseExport(nn.Module):
    def forward(self, x):
        if torch.compiler.is_exporting():
            raise RuntimeError("this layer refuses to export")
        return x * 2


class RefusingExport(nn.Module):
    """A gate, then a block whose export raises inside a layer (not in forward itself)."""

    def __init__(self):
        super().__init__()
        _seeded(23)
        self.a = nn.Linear(4, 4)
        self.refuse = _RefuseExport()
        self.eval()

    def example_inputs(self):
        return (torch.randn(1, 4),)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            x = self.refuse(x) + 1
        return x - 1


class TokenMoE(nn.Module):
    """Switch-Transformer-style token dispatch: every token goes to its top-1 expert, experts
    run on their own tokens only (sizes from data) and write their answers back in place."""

    def __init__(self, d: int = 16, n_experts: int = 4, tokens: int = 12):
        super().__init__()
        self.router = nn.Linear(d, n_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            for _ in range(n_experts)
        )
        self.example_inputs = (torch.randn(tokens, d),)

    def forward(self, x):
        probs = torch.softmax(self.router(x), dim=-1)
        gate, idx = probs.max(dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            mask = idx == e
            if mask.any():
                out[mask] = expert(x[mask]) * gate[mask].unsqueeze(-1)
        return out + x

    def sample_inputs(self, cond, n):
        """Varied tokens, and sequences of one repeated token (one expert gets them all)."""
        gen = torch.Generator().manual_seed(6)
        shape = self.example_inputs[0].shape
        out = []
        for i in range(n):
            x = torch.randn(shape, generator=gen)
            out.append((x if i % 2 else x[:1].expand(shape).clone(),))
        return out
