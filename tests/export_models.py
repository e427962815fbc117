"""Models that need more than one exporter, written as their authors write them."""

import numpy as np
import torch
from torch import nn


class MetaFusion(nn.Module):
    """An input named like a submodule: `meta` is both (dynamo alone fails on the clash)."""

    def __init__(self):
        super().__init__()
        self.img = nn.Linear(4, 3)
        self.meta = nn.Linear(2, 3)

    def forward(self, img, meta):
        return self.img(img) + self.meta(meta)


class StoredPermutation(nn.Module):
    """A fixed channel permutation kept in a buffer, applied with Python indices: torch.export
    cannot read a buffer's values while tracing; the TorchScript exporter can."""

    def __init__(self):
        super().__init__()
        self.register_buffer("perm", torch.tensor([3, 1, 0, 2]))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        idx = self.perm.tolist()
        return self.fc(x[:, idx])


class PermutedGroups(StoredPermutation):
    """As above, then a reshape by the batch size read as a Python int, which the TorchScript
    exporter bakes in: its dynamic-batch graph is wrong for a batch of 3."""

    def forward(self, x):
        idx = self.perm.tolist()
        n = int(x.shape[0])
        return self.fc(x[:, idx]).reshape(n, 3) * 2


class NumpyScale(nn.Module):
    """A scale computed with NumPy from a buffer: only dynamo's strict tracing follows it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("table", torch.randn(4))

    def forward(self, x):
        scale = torch.from_numpy(np.cumsum(self.table.numpy()))
        return self.fc(x * scale)


class Bessel(nn.Module):
    """An operator no exporter can write to ONNX."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(x)
        return torch.special.bessel_j0(y)


class PermutedGate(StoredPermutation):
    """As StoredPermutation, then a branch on the value of its output, read as a Python float:
    a trace would freeze the side the example took."""

    def forward(self, x):
        idx = self.perm.tolist()
        y = self.fc(x[:, idx])
        if float(y.sum()) > 100.0:
            return y * 0
        return y


class TracingShortcut(nn.Module):
    """Code that takes another path under TorchScript tracing, as libraries do for their export
    paths; here the traced path leaves the bias out, so a trace answers unlike the model."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if torch.jit.is_tracing():
            return torch.nn.functional.linear(x, self.fc.weight)
        return self.fc(x)
