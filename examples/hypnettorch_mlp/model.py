"""A hypnettorch continual-learning setup: an HMLP hypernet with one embedding per task
generates every weight of an MLP main network (hypnettorch's own classes, from PyPI)."""

from __future__ import annotations

import torch
from hypnettorch.hnets import HMLP
from hypnettorch.mnets import MLP

from hypercompile.adapters.hypnettorch import HypnettorchModel


def make(num_tasks: int = 10, n_in: int = 64, n_out: int = 10, seed: int = 0) -> HypnettorchModel:
    """Untrained but deterministic: deployment cost does not depend on the trained values."""
    torch.manual_seed(seed)
    mnet = MLP(n_in=n_in, n_out=n_out, hidden_layers=(100, 100), no_weights=True, verbose=False)
    hnet = HMLP(
        mnet.param_shapes,
        cond_in_size=16,
        layers=(100, 100),
        num_cond_embs=num_tasks,
        verbose=False,
    )
    hnet.apply_hyperfan_init(mnet=mnet)
    return HypnettorchModel(hnet, mnet)
