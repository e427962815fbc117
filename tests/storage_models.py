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
