"""Task-conditioned hypernetwork for continual learning.

A learned embedding per task is mapped by an MLP hypernetwork to every weight of a small CNN
(the target). Tasks are learned one after another; an output regulariser keeps the weights that
the hypernetwork generates for earlier tasks where they were, so old tasks are not forgotten
(the scheme of von Oswald et al., "Continual learning with hypernetworks", ICLR 2020).

Every task yields the same target architecture, so a compiler exports one graph and binds one
weight file per task. The model reference is ``examples/continual_hypernet/model.py:make``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

IMAGE_SIZE = 16
NUM_CLASSES = 10
EMBED_DIM = 8
HIDDEN = 64
TRAIN_SIZE = 512
TEST_SIZE = 256
BATCH_SIZE = 64
NOISE = 2.0


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread: faster than a contended pool for ops this small, and reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TargetCNN(nn.Module):
    """The target: two conv blocks and a linear head, ``(N, 1, 16, 16) -> (N, 10)`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=3, padding=1)
        self.fc = nn.Linear(16 * (IMAGE_SIZE // 4) ** 2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def _fresh_target() -> TargetCNN:
    """A new target in eval mode, built without touching the global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TargetCNN().eval()


class HyperNet(nn.Module):
    """MLP from a task embedding to every parameter of :class:`TargetCNN`.

    The raw output is multiplied by a fixed per-layer scale (``1/sqrt(fan_in)``) so that the
    generated weights start at a sensible magnitude for every layer.
    """

    def __init__(self, shapes: dict[str, torch.Size], embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.names = list(shapes)
        self.shapes = [shapes[n] for n in self.names]
        self.numels = [math.prod(s) for s in self.shapes]
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, sum(self.numels)),
        )
        scales = []
        for name, numel in zip(self.names, self.numels, strict=True):
            fan_in = math.prod(shapes[name.rsplit(".", 1)[0] + ".weight"][1:])
            scales.append(torch.full((numel,), 1.0 / math.sqrt(fan_in)))
        self.register_buffer("scale", torch.cat(scales))

    def forward(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        chunks = (self.mlp(embedding) * self.scale).split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}


class TaskHyperNet(nn.Module):
    """Learned task embeddings followed by the weight-generating MLP."""

    def __init__(self, num_tasks: int, shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        self.embeddings = nn.Parameter(torch.randn(num_tasks, EMBED_DIM))
        self.hnet = HyperNet(shapes, EMBED_DIM, HIDDEN)

    def forward(self, task: int) -> dict[str, torch.Tensor]:
        return self.hnet(self.embeddings[task])


def _task_data(task: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Noisy copies of ten random coarse class prototypes; each task has its own prototypes."""
    g = torch.Generator().manual_seed(seed * 100_003 + task)
    coarse = torch.randn(NUM_CLASSES, 1, 4, 4, generator=g)
    prototypes = F.interpolate(coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    n = TRAIN_SIZE + TEST_SIZE
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    images = prototypes[labels] + NOISE * torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return images[:TRAIN_SIZE], labels[:TRAIN_SIZE], images[TRAIN_SIZE:], labels[TRAIN_SIZE:]


class ContinualHyperModel:
    """HyperModel: ``{"task": t}`` -> the CNN whose weights the hypernetwork makes for task t.

    A plain object rather than an ``nn.Module``, so tools never mistake it for a static model.
    """

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.num_tasks = num_tasks
        self.seed = seed
        self.target = _fresh_target()
        shapes = {n: p.shape for n, p in self.target.named_parameters()}
        self.net = TaskHyperNet(num_tasks, shapes).eval()
        self.losses: list[list[float]] = []
        self.accuracy: dict[int, float] = {}

    # -- HyperModel protocol -------------------------------------------------------------------

    def conditions(self) -> list[dict[str, int]]:
        """One condition per task."""
        return [{"task": t} for t in range(self.num_tasks)]

    def build(self, cond: dict) -> nn.Module:
        """A fresh target CNN in eval mode; the architecture is the same for every task."""
        self._task(cond)
        return _fresh_target()

    def generate(self, cond: dict) -> dict[str, torch.Tensor]:
        """The full state_dict of ``build(cond)``, produced by the hypernetwork."""
        with torch.no_grad():
            weights = self.net(self._task(cond))
        return {n: w.detach().clone().contiguous() for n, w in weights.items()}

    def example_inputs(self, cond: dict) -> tuple[torch.Tensor]:
        """One random image, shape ``(1, 1, 16, 16)``."""
        g = torch.Generator().manual_seed(1_000 + self._task(cond))
        return (torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g),)

    def reference(self, cond: dict, *inputs: torch.Tensor) -> torch.Tensor:
        """Hypernet + target, functionally: generated tensors go straight into the forward."""
        with torch.no_grad():
            return functional_call(self.target, self.net(self._task(cond)), inputs)

    # -- training -----------------------------------------------------------------------------

    def _task(self, cond: dict) -> int:
        task = int(cond["task"])
        if not 0 <= task < self.num_tasks:
            raise KeyError(f"task {task} not in 0..{self.num_tasks - 1}")
        return task

    @_one_thread()
    def fit(self, steps: int, beta: float = 0.05, lr: float = 3e-3) -> None:
        """Learn the tasks in sequence, regularising the outputs for the earlier tasks."""
        data = [_task_data(t, self.seed) for t in range(self.num_tasks)]
        net = self.net.train()
        for task, (x_train, y_train, _, _) in enumerate(data):
            with torch.no_grad():
                anchors = net.hnet.mlp(net.embeddings[:task]).clone()
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            g = torch.Generator().manual_seed(self.seed * 7_919 + task)
            curve: list[float] = []
            for _ in range(steps):
                idx = torch.randint(0, TRAIN_SIZE, (BATCH_SIZE,), generator=g)
                logits = functional_call(self.target, net(task), (x_train[idx],))
                loss = F.cross_entropy(logits, y_train[idx])
                curve.append(loss.item())
                if task > 0:
                    drift = net.hnet.mlp(net.embeddings[:task].detach()) - anchors
                    loss = loss + beta * drift.pow(2).sum(dim=1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.losses.append(curve)
        net.eval()
        with torch.no_grad():
            for task, (_, _, x_test, y_test) in enumerate(data):
                pred = functional_call(self.target, net(task), (x_test,)).argmax(dim=1)
                self.accuracy[task] = (pred == y_test).float().mean().item()


def make(num_tasks: int = 5, steps: int = 60, seed: int = 0) -> ContinualHyperModel:
    """Train the hypernetwork on ``num_tasks`` synthetic tasks in sequence (a few seconds)."""
    model = ContinualHyperModel(num_tasks, seed)
    model.fit(steps)
    return model


def make_untrained(num_tasks: int = 50, seed: int = 0) -> ContinualHyperModel:
    """An untrained hypernetwork with ``num_tasks`` tasks, for quick benchmarks."""
    return ContinualHyperModel(num_tasks, seed)


if __name__ == "__main__":
    start = time.perf_counter()
    hm = make()
    print(f"trained in {time.perf_counter() - start:.2f} s")
    print("first/last loss per task:", [(round(c[0], 2), round(c[-1], 2)) for c in hm.losses])
    print("test accuracy per task:", {t: round(a, 3) for t, a in hm.accuracy.items()})
