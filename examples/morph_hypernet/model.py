"""NeuMeta-style implicit hypernetwork: one continuous weight field, targets of any width.

A small coordinate MLP (an implicit neural representation) maps the coordinate of one weight
(layer, normalised output index, normalised input index, bias flag, network width) to that
weight's value. Sampling the field on the grid of a width-``w`` network materialises an ordinary
MLP ``64 -> w -> w -> 10``; every width is trained at once, so every width is a working
classifier (Yang et al., "Neural Metamorphosis", ECCV 2024).

Different widths are different architectures: a compiler exports one graph per width. The model
reference is ``examples/morph_hypernet/model.py:make``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

IN_DIM = 64
NUM_CLASSES = 10
MAX_WIDTH = 64
NUM_FREQS = 32
FREQ_SCALE = 4.0
HIDDEN_GAIN = 4.0
HIDDEN = 32
TRAIN_SIZE = 2048
TEST_SIZE = 1024
BATCH_SIZE = 128
NOISE = 1.5
LAYERS = ("fc1", "fc2", "fc3")


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread: faster than a contended pool for ops this small, and reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TargetMLP(nn.Module):
    """The target: ``(N, 64) -> (N, 10)`` logits through two hidden layers of ``width`` units."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN_DIM, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _fresh_target(width: int) -> TargetMLP:
    """A new target in eval mode, built without touching the global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TargetMLP(width).eval()


def _fourier(pos: torch.Tensor) -> torch.Tensor:
    """Random Fourier features of 2-D positions in [0, 1]^2 (fixed frequencies, seed 0)."""
    g = torch.Generator().manual_seed(0)
    freqs = FREQ_SCALE * torch.randn(2, NUM_FREQS, generator=g)
    angles = 2 * math.pi * pos @ freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class WeightGrid:
    """Coordinate features and layout of every parameter of ``TargetMLP(width)``."""

    def __init__(self, width: int) -> None:
        dims = [IN_DIM, width, width, NUM_CLASSES]
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        features, scales = [], []
        for layer, name in enumerate(LAYERS):
            fan_in, fan_out = dims[layer], dims[layer + 1]
            out_pos = (torch.arange(fan_out) + 0.5) / fan_out
            in_pos = (torch.arange(fan_in) + 0.5) / fan_in
            weight = torch.stack(torch.meshgrid(out_pos, in_pos, indexing="ij"), -1).view(-1, 2)
            bias = torch.stack([out_pos, torch.zeros(fan_out)], -1)
            # Hidden inputs sum over `width` units: scaling by 1/fan_in makes that sum a Riemann
            # sum of the continuous field, so narrow and wide networks compute similar functions.
            scale = 1.0 / math.sqrt(fan_in) if layer == 0 else HIDDEN_GAIN / fan_in
            for suffix, pos, is_bias in (("weight", weight, 0.0), ("bias", bias, 1.0)):
                flags = torch.zeros(len(pos), len(LAYERS) + 2)
                flags[:, layer] = 1.0
                flags[:, len(LAYERS)] = is_bias
                flags[:, len(LAYERS) + 1] = width / MAX_WIDTH
                features.append(torch.cat([flags, _fourier(pos)], dim=-1))
                self.names.append(f"{name}.{suffix}")
                self.shapes.append((fan_out, fan_in) if suffix == "weight" else (fan_out,))
                scales.append(torch.full((math.prod(self.shapes[-1]), 1), scale))
        self.numels = [math.prod(s) for s in self.shapes]
        self.features = torch.cat(features)
        self.scale = torch.cat(scales)


FEATURE_DIM = len(LAYERS) + 2 + 2 * NUM_FREQS


class WeightField(nn.Module):
    """The implicit hypernetwork: weight coordinate features -> weight value."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FEATURE_DIM, HIDDEN),
            nn.SiLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.SiLU(),
            nn.Linear(HIDDEN, 1),
        )
        # Zero-mean output at unit scale, so that neurons start out distinct.
        nn.init.normal_(self.mlp[-1].weight, std=1.0 / math.sqrt(HIDDEN))
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, grid: WeightGrid) -> dict[str, torch.Tensor]:
        chunks = (self.mlp(grid.features) * grid.scale).split(grid.numels)
        return {n: c.view(s) for n, c, s in zip(grid.names, chunks, grid.shapes, strict=True)}


def _data(seed: int) -> tuple[torch.Tensor, ...]:
    """Noisy smooth 1-D signals; each of the ten classes has its own random low-frequency shape."""
    g = torch.Generator().manual_seed(seed * 100_003 + 17)
    t = torch.linspace(0.0, 1.0, IN_DIM)
    k = torch.arange(1, 5, dtype=torch.float32)
    amp = torch.randn(NUM_CLASSES, len(k), 1, generator=g)
    phase = 2 * math.pi * torch.rand(NUM_CLASSES, len(k), 1, generator=g)
    prototypes = (amp * torch.sin(2 * math.pi * k[:, None] * t + phase)).sum(dim=1)
    n = TRAIN_SIZE + TEST_SIZE
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    signals = prototypes[labels] + NOISE * torch.randn(n, IN_DIM, generator=g)
    return signals[:TRAIN_SIZE], labels[:TRAIN_SIZE], signals[TRAIN_SIZE:], labels[TRAIN_SIZE:]


class MorphHyperModel:
    """HyperModel: ``{"width": w}`` -> the MLP of hidden width ``w`` sampled from the field.

    A plain object rather than an ``nn.Module``, so tools never mistake it for a static model.
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 64), seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.widths = [int(w) for w in widths]
        self.seed = seed
        self.field = WeightField().eval()
        self.losses: list[float] = []
        self._grids: dict[int, WeightGrid] = {}
        self._targets: dict[int, TargetMLP] = {}
        self._quality: dict[int, float] = {}

    # -- HyperModel protocol -------------------------------------------------------------------

    def conditions(self) -> list[dict[str, int]]:
        """One condition per width."""
        return [{"width": w} for w in self.widths]

    def selectable(self) -> list[str]:
        """A latency budget may choose the width: the widths are versions of one model."""
        return ["width"]

    def build(self, cond: dict) -> nn.Module:
        """A fresh target MLP of the condition's width, in eval mode."""
        return _fresh_target(self._width(cond))

    def generate(self, cond: dict) -> dict[str, torch.Tensor]:
        """The full state_dict of ``build(cond)``, sampled from the weight field."""
        with torch.no_grad():
            weights = self.field(self._grid(self._width(cond)))
        return {n: w.detach().clone().contiguous() for n, w in weights.items()}

    def example_inputs(self, cond: dict) -> tuple[torch.Tensor]:
        """One random signal, shape ``(1, 64)``."""
        g = torch.Generator().manual_seed(1_000 + self._width(cond))
        return (torch.randn(1, IN_DIM, generator=g),)

    def reference(self, cond: dict, *inputs: torch.Tensor) -> torch.Tensor:
        """Field + target, functionally: sampled tensors go straight into the forward."""
        with torch.no_grad():
            return self._forward(self._width(cond), inputs[0])

    def quality(self, cond: dict) -> float:
        """Test accuracy of the width on the synthetic task (computed once, then cached)."""
        width = self._width(cond)
        if width not in self._quality:
            _, _, x_test, y_test = _data(self.seed)
            with torch.no_grad():
                pred = self._forward(width, x_test).argmax(dim=1)
            self._quality[width] = (pred == y_test).float().mean().item()
        return self._quality[width]

    # -- internals ----------------------------------------------------------------------------

    def _width(self, cond: dict) -> int:
        width = int(cond["width"])
        if width < 1:
            raise KeyError(f"width must be positive, got {width}")
        return width

    def _grid(self, width: int) -> WeightGrid:
        if width not in self._grids:
            self._grids[width] = WeightGrid(width)
        return self._grids[width]

    def _forward(self, width: int, x: torch.Tensor) -> torch.Tensor:
        if width not in self._targets:
            self._targets[width] = _fresh_target(width)
        return functional_call(self._targets[width], self.field(self._grid(width)), (x,))

    @_one_thread()
    def fit(self, steps: int, lr: float = 1e-2) -> None:
        """Train the field on every listed width plus one random width per step."""
        x_train, y_train, _, _ = _data(self.seed)
        lo, hi = min(self.widths), max(self.widths)
        g = torch.Generator().manual_seed(self.seed * 7_919 + 1)
        opt = torch.optim.Adam(self.field.parameters(), lr=lr)
        self.field.train()
        for _ in range(steps):
            idx = torch.randint(0, TRAIN_SIZE, (BATCH_SIZE,), generator=g)
            extra = int(torch.randint(lo, hi + 1, (1,), generator=g))
            widths = [*self.widths, extra]
            loss = torch.stack(
                [F.cross_entropy(self._forward(w, x_train[idx]), y_train[idx]) for w in widths]
            ).mean()
            self.losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.field.eval()
        self._quality.clear()
        for cond in self.conditions():
            self.quality(cond)


def make(
    widths: Sequence[int] = (8, 16, 32, 64), steps: int = 150, seed: int = 0
) -> MorphHyperModel:
    """Train the weight field on all ``widths`` at once (a few seconds)."""
    model = MorphHyperModel(widths, seed)
    model.fit(steps)
    return model


if __name__ == "__main__":
    start = time.perf_counter()
    hm = make()
    print(f"trained in {time.perf_counter() - start:.2f} s")
    print(f"loss: first {hm.losses[0]:.3f}, last {hm.losses[-1]:.3f}")
    for label, widths in (("trained", hm.widths), ("unseen", [12, 24, 48])):
        accuracy = {w: round(hm.quality({"width": w}), 3) for w in widths}
        print(f"test accuracy, {label} widths:", accuracy)
