"""Models for the protocol tests: structured conditions, a hypernet that needs autograd, plain
modules with named inputs and no example inputs. Each builds in a second or two."""

from __future__ import annotations

import json
import zlib

import torch
import torch.nn.functional as F
from torch import nn

STRUCTURED = [
    {"ks": [3, 5, 7], "e": {"w": 4, "act": "relu"}, "lang": 1},
    {"ks": [3, 5, 7], "e": {"w": 4, "act": "relu"}, "lang": "1"},
    {"ks": [7, 5, 3], "e": {"w": 8, "act": "relu"}, "lang": 1},
]


class Structured:
    """OFA-style conditions (lists, nested objects; `lang` 1 and "1" are different variants):
    an 8-`e.w`-4 MLP whose weights depend on the whole condition."""

    def conditions(self):
        return [json.loads(json.dumps(c)) for c in STRUCTURED]

    def build(self, cond):
        w = cond["e"]["w"]
        return nn.Sequential(nn.Linear(8, w), nn.ReLU(), nn.Linear(w, 4)).eval()

    def generate(self, cond):
        seed = zlib.crc32(json.dumps(cond, sort_keys=True).encode())
        gen = torch.Generator().manual_seed(seed)
        state = self.build(cond).state_dict()
        return {k: torch.randn(v.shape, generator=gen) for k, v in state.items()}

    def example_inputs(self, cond):
        return torch.randn(1, 8, generator=torch.Generator().manual_seed(1))  # a bare tensor


class GradHyper:
    """A hypernet that builds its weights through autograd, as graph hypernets do: each weight
    is the gradient of an energy with respect to a leaf tensor (refuses to run without grad)."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.emb = torch.randn(3, 6, generator=gen)
        self.proj = torch.randn(6, 4 * 6 + 4, generator=gen) * 0.5

    def conditions(self):
        return [{"task": t} for t in range(3)]

    def build(self, cond):
        return nn.Linear(6, 4).eval()

    def _weights(self, task):
        z = torch.zeros(4 * 6 + 4, requires_grad=True)
        energy = (z * (self.emb[task] @ self.proj)).sum() + 0.5 * (z**2).sum()
        (grad,) = torch.autograd.grad(energy, z, create_graph=True)
        return {"weight": grad[:24].reshape(4, 6), "bias": grad[24:]}

    def generate(self, cond):
        return self._weights(cond["task"])

    def example_inputs(self, cond):
        return (torch.randn(1, 6, generator=torch.Generator().manual_seed(2)),)

    def reference(self, cond, x):
        w = self._weights(cond["task"])
        return F.linear(x, w["weight"], w["bias"])


class TwoNamed(nn.Module):
    """A plain module with two named inputs (one integer) and no example inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.emb = nn.Embedding(2, 4)

    def forward(self, x, ids):
        return self.conv(x).mean((2, 3)) + self.emb(ids).sum(1)
