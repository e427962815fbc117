"""A held-out conv DyNN for the TVM tuning check: an early-exit CNN written the way
BranchyNet-style papers' code is (a side branch after the first stage, entropy of its softmax
against a threshold, `return` from inside `forward`), not written for hypercompile and not part
of the zoo.

    hypercompile build benchmarks/heldout_exit_cnn.py:ExitCNN --backend tvm --tune-trials 64
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class ExitCNN(nn.Module):
    def __init__(self, num_classes=10, threshold=0.65):
        super().__init__()
        torch.manual_seed(0)
        self.threshold = threshold
        self.stage1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.branch1 = nn.Sequential(
            nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )
        self.exit1 = nn.Linear(16, num_classes)
        self.stage2 = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(64, num_classes)
        # a trained side branch is confident on easy inputs; at random init its logits are
        # near zero, so it is scaled up to make about half of random inputs exit early
        with torch.no_grad():
            self.exit1.weight.mul_(40)
        self.eval()

    def entropy(self, logits):
        p = F.softmax(logits, dim=1)
        return -(p * torch.log(p + 1e-12)).sum(dim=1) / torch.log(torch.tensor(10.0))

    def forward(self, x):
        x = self.stage1(x)
        e1 = self.exit1(self.branch1(x).flatten(1))
        if self.entropy(e1).max() < self.threshold:
            return e1
        x = self.stage2(x)
        return self.fc(x.flatten(1))

    def example_inputs(self):
        return (torch.randn(1, 3, 32, 32),)
