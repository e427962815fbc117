"""One small model per construct that users bring, written as papers' and libraries' authors
write them (random weights). The corpus test builds each unmodified and compares it with eager
PyTorch on fresh inputs."""

import warnings

import torch
import torch.nn.functional as F
from torch import nn


class RankChecked(nn.Module):
    """Static facts asserted (rank, feature size, dtype), as library code does."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        assert x.dim() == 2, "expects (batch, features)"
        assert x.shape[-1] == self.fc.in_features and x.dtype == torch.float32
        return self.fc(x)


class SkipGate(nn.Module):
    """SkipNet-style: a gate decides whether a block runs; `del` frees the gate's input."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        self.gate = nn.Linear(6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        g = torch.sigmoid(self.gate(x.mean(0, keepdim=True)))
        if g.item() > 0.5:
            res = self.block(x)
            x = x + res
            del res
        return self.head(x)


class QuietBlocks(nn.Module):
    """`with` blocks that change no value: autocast off, inference mode, caught warnings."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            h = F.gelu(self.a(x.float()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            h = h * 2
        return self.b(h)


class Choose(nn.Module):
    """A conditional expression on tensor data."""

    def __init__(self):
        super().__init__()
        self.pos, self.neg = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        y = self.pos(x) if x.sum() > 0 else self.neg(x)
        return y.tanh()


class WarnsOnRange(nn.Module):
    """A library-style range check that only warns, before a normal computation."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        if (x.abs() > 3).any():
            warnings.warn("input has values outside [-3, 3]")  # noqa: B028  (as authors write)
        return self.fc(x)


class ImageAndMeta(nn.Module):
    """A forward argument named like a submodule."""

    def __init__(self):
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.meta = nn.Linear(2, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, img, meta):
        return self.head(self.img(img).flatten(1) + self.meta(meta))


class PHMLinear(nn.Module):
    """A parameterized hypercomplex multiplication layer: W = sum_i kron(A_i, S_i)."""

    def __init__(self, n=2, d_in=6, d_out=4):
        super().__init__()
        self.A = nn.Parameter(torch.randn(n, n, n))
        self.S = nn.Parameter(torch.randn(n, d_out // n, d_in // n) * 0.3)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x):
        W = sum(torch.kron(self.A[i], self.S[i]) for i in range(self.A.shape[0]))
        return F.linear(x, W, self.bias)


class RunningCenter(nn.Module):
    """Keeps a running mean of its inputs between calls (state)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.register_buffer("center", torch.zeros(6))

    def forward(self, x):
        with torch.no_grad():
            self.center.mul_(0.8).add_(0.2 * x.mean(0))
        return self.fc(x - self.center)


class CountsCalls(nn.Module):
    """State in a Python int: no graph can carry it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.steps = 0

    def forward(self, x):
        self.steps += 1
        return self.fc(x) / self.steps


class NoExamples(nn.Module):
    """A plain module without example inputs: shapes come from `--input`."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))
