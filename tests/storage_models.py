"""A Stitchable Neural Network family (SN-Net, Pan et al., CVPR 2023), written as its authors
write one: two pretrained anchors of different widths (random init here), and stitching layers
that map one anchor's activations onto the other's at several depths. Each stitch
configuration is a network of its own, built from the anchors' blocks, so the variants share
almost all their weights."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """A pre-norm residual MLP block (the MLP half of a ViT block)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Anchor(nn.Module):
    """One anchor network: embedding, `depth` blocks of width `dim`, norm and classifier."""

    def __init__(self, in_dim: int, dim: int, depth: int, classes: int):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList([Block(dim, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


class StitchedNet(nn.Module):
    """`front`'s embedding and first `at` blocks, the stitching layer, then `back`'s blocks
    from `at` on and its head (SN-Net's stitched forward)."""

    def __init__(self, front: Anchor, back: Anchor, stitch: nn.Module, at: int):
        super().__init__()
        self.embed = front.embed
        self.blocks = nn.ModuleList(list(front.blocks[:at]) + list(back.blocks[at:]))
        self.stitch = stitch
        self.at = at
        self.norm = back.norm
        self.head = back.head

    def forward(self, x):
        x = self.embed(x)
        for i, blk in enumerate(self.blocks):
            if i == self.at:
                x = self.stitch(x)
            x = blk(x)
        return self.head(self.norm(x))


class StitchFamily:
    """HyperModel: one variant per stitch configuration `{"front", "back", "at"}` (the two
    anchors themselves: front == back). Stitching layers go both ways (small -> large and
    large -> small) at every depth in `points`."""

    def __init__(self, widths=(48, 96), depth: int = 4, points=(1, 2, 3), in_dim=32, classes=10):
        torch.manual_seed(0)
        self.in_dim = in_dim
        self.anchors = {
            "small": Anchor(in_dim, widths[0], depth, classes).eval(),
            "large": Anchor(in_dim, widths[1], depth, classes).eval(),
        }
        dims = {"small": widths[0], "large": widths[1]}
        self.stitches = {
            (a, b, k): nn.Linear(dims[a], dims[b])
            for k in points
            for a, b in (("small", "large"), ("large", "small"))
        }
        self.depth = depth

    def conditions(self):
        anchors = [{"front": a, "back": a, "at": self.depth} for a in self.anchors]
        return anchors + [{"front": a, "back": b, "at": k} for a, b, k in self.stitches]

    def build(self, cond):
        front, back = self.anchors[cond["front"]], self.anchors[cond["back"]]
        key = (cond["front"], cond["back"], cond["at"])
        stitch = self.stitches.get(key, nn.Identity())
        return StitchedNet(front, back, stitch, cond["at"]).eval()

    def generate(self, cond):
        return self.build(cond).state_dict()

    def example_inputs(self, cond):
        return (torch.randn(1, self.in_dim),)


# -- a federated hypernet (pFedHN, Shamsian et al., ICML 2021) ------------------------------------


class CNNTarget(nn.Module):
    """pFedHN's client network: LeNet-style, for 32x32 colour images."""

    def __init__(self, in_channels: int = 3, n_kernels: int = 16, out_dim: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, n_kernels, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(n_kernels, 2 * n_kernels, 5)
        self.fc1 = nn.Linear(2 * n_kernels * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, out_dim)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.view(x.shape[0], -1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class CNNHyper(nn.Module):
    """pFedHN's hypernet: a client embedding -> an MLP -> one linear head per target tensor."""

    def __init__(self, n_nodes, embedding_dim, in_channels=3, out_dim=10, n_kernels=16,
                 hidden_dim=100, n_hidden=3):  # fmt: skip
        super().__init__()
        self.in_channels, self.out_dim, self.n_kernels = in_channels, out_dim, n_kernels
        self.embeddings = nn.Embedding(num_embeddings=n_nodes, embedding_dim=embedding_dim)
        layers = [nn.Linear(embedding_dim, hidden_dim)]
        for _ in range(n_hidden):
            layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, hidden_dim)]
        self.mlp = nn.Sequential(*layers)
        k, c = n_kernels, in_channels
        self.c1_weights = nn.Linear(hidden_dim, k * c * 5 * 5)
        self.c1_bias = nn.Linear(hidden_dim, k)
        self.c2_weights = nn.Linear(hidden_dim, 2 * k * k * 5 * 5)
        self.c2_bias = nn.Linear(hidden_dim, 2 * k)
        self.l1_weights = nn.Linear(hidden_dim, 120 * 2 * k * 5 * 5)
        self.l1_bias = nn.Linear(hidden_dim, 120)
        self.l2_weights = nn.Linear(hidden_dim, 84 * 120)
        self.l2_bias = nn.Linear(hidden_dim, 84)
        self.l3_weights = nn.Linear(hidden_dim, out_dim * 84)
        self.l3_bias = nn.Linear(hidden_dim, out_dim)

    def weights_from(self, emd):
        features = self.mlp(emd)
        k, c = self.n_kernels, self.in_channels
        return {
            "conv1.weight": self.c1_weights(features).view(k, c, 5, 5),
            "conv1.bias": self.c1_bias(features).view(-1),
            "conv2.weight": self.c2_weights(features).view(2 * k, k, 5, 5),
            "conv2.bias": self.c2_bias(features).view(-1),
            "fc1.weight": self.l1_weights(features).view(120, 2 * k * 5 * 5),
            "fc1.bias": self.l1_bias(features).view(-1),
            "fc2.weight": self.l2_weights(features).view(84, 120),
            "fc2.bias": self.l2_bias(features).view(-1),
            "fc3.weight": self.l3_weights(features).view(self.out_dim, 84),
            "fc3.bias": self.l3_bias(features).view(-1),
        }

    def forward(self, idx):
        return self.weights_from(self.embeddings(idx))


class FederatedHypernet:
    """HyperModel: one variant per client `{"client": i}`; `generator()` maps a client
    embedding to its network's weights, so a bundle stores the hypernet and 100 embeddings."""

    def __init__(self, clients: int = 100):
        torch.manual_seed(0)
        self.hnet = CNNHyper(clients, int(1 + clients / 4)).eval()
        self.clients = clients

    def conditions(self):
        return [{"client": i} for i in range(self.clients)]

    def build(self, cond):
        return CNNTarget().eval()

    def generate(self, cond):
        with torch.no_grad():
            return self.hnet(torch.tensor(cond["client"]))

    def example_inputs(self, cond):
        return (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)

    def generator(self):
        return _EmbeddingToWeights(self.hnet)

    def generator_inputs(self, cond):
        return (self.hnet.embeddings.weight[cond["client"]].detach().clone(),)

    def generator_input_keys(self):
        return ["embedding"]


class _EmbeddingToWeights(nn.Module):
    def __init__(self, hnet: CNNHyper):
        super().__init__()
        self.hnet = hnet

    def forward(self, emb):
        return self.hnet.weights_from(emb)
