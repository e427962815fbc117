"""Models that keep state between calls, written as their authors write them (random weights)."""

import torch
from torch import nn


class RunningNorm(nn.Module):
    """Normalizes by a running mean of its inputs, updated in place on every call."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("mean", torch.zeros(4))

    def forward(self, x):
        with torch.no_grad():
            self.mean.mul_(0.9).add_(0.1 * x.mean(0))
        return self.fc(x - self.mean)


class StreamingGRU(nn.Module):
    """A recurrent cell that keeps its hidden state in `self.h` (reassigned every call): its
    shape ties the batch to 1."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(4, 5)
        self.h = torch.zeros(1, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        self.h = self.cell(x, self.h)
        return self.out(self.h)


class EvolvingWeights(nn.Module):
    """EvolveGCN-O style: a GRU rewrites the layer's weight matrix in place on every call."""

    def __init__(self, n: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) * 0.5)
        self.evolve = nn.GRUCell(n, n)

    def forward(self, adj, x):
        with torch.no_grad():
            self.weight.copy_(self.evolve(self.weight, self.weight))
        return torch.relu(adj @ x @ self.weight)


class EvolvingHyper:
    """Two tasks of EvolvingWeights, each with its own initial weight (a HyperModel)."""

    def conditions(self):
        return [{"task": 0}, {"task": 1}]

    def build(self, cond):
        return EvolvingWeights().eval()

    def generate(self, cond):
        torch.manual_seed(10 + cond["task"])
        return EvolvingWeights().state_dict()

    def example_inputs(self, cond):
        return ((torch.rand(1, 3, 3) > 0.5).float(), torch.randn(1, 3, 4))


class CallCounter(nn.Module):
    """Scales by how often it was called: state in a Python int, which no graph can carry."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * self.calls


class Membrane(nn.Module):
    """snntorch-style explicit state: the membrane is reset at the start of every call, then
    written before it is read, so nothing is kept between calls."""

    def __init__(self, steps: int = 4):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.steps = steps
        self.mem = torch.zeros(1, 3)

    def forward(self, x):
        self.mem = torch.zeros_like(self.fc(x))
        spikes = []
        for _ in range(self.steps):
            self.mem = 0.9 * self.mem + self.fc(x)
            spk = (self.mem > 1.0).float()
            self.mem = self.mem - spk
            spikes.append(spk)
        return torch.stack(spikes).sum(0) + self.mem
