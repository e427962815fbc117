"""hypnettorch hypernets for the adapter tests (the real PyPI package)."""

from __future__ import annotations

import torch
from hypnettorch.hnets import HMLP, ChunkedHMLP
from hypnettorch.mnets import MLP

from hypercompile.adapters.hypnettorch import HypnettorchModel


def hmlp_mlp(num_tasks: int = 4) -> HypnettorchModel:
    torch.manual_seed(0)
    mnet = MLP(n_in=12, n_out=5, hidden_layers=(32, 32), no_weights=True, verbose=False)
    hnet = HMLP(
        mnet.param_shapes, cond_in_size=8, layers=(64, 64), num_cond_embs=num_tasks, verbose=False
    )
    return HypnettorchModel(hnet, mnet)


def chunked_bn(num_tasks: int = 3) -> HypnettorchModel:
    """ChunkedHMLP -> MLP with batch norm, one set of running stats per task."""
    torch.manual_seed(1)
    mnet = MLP(
        n_in=10,
        n_out=3,
        hidden_layers=(24, 24),
        no_weights=True,
        use_batch_norm=True,
        bn_track_stats=True,
        verbose=False,
    )
    hnet = ChunkedHMLP(
        mnet.param_shapes,
        chunk_size=100,
        cond_in_size=6,
        layers=(32,),
        num_cond_embs=num_tasks,
        verbose=False,
    )
    for t in range(num_tasks):
        for bn in mnet.batchnorm_layers:
            if t > 0:
                bn.checkpoint_stats()
            mean, var = bn.get_stats()
            mean.uniform_(-1, 1)
            var.uniform_(0.5, 2.0)
    return HypnettorchModel(hnet, mnet)
