"""Small models for host lists, dropped effects and constants made in forward (issue 12),
written the way their authors write them (Shallow-Deep, RaNet, an RNN captioner, an RL policy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Variable


class _Small(nn.Module):
    seed = 0
    shape = (1, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(self.seed)
        self.build()
        self.eval()

    def example_inputs(self):
        return (torch.randn(*self.shape),)


class ExitConfidences(_Small):
    """Shallow-Deep style: every internal classifier's confidence is collected; inference stops
    at the first confident exit; returns the logits and the stacked confidences."""

    def build(self):
        self.stages = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.heads = nn.ModuleList([nn.Linear(8, 4) for _ in range(3)])
        self.thresholds = [0.3174, 0.3428, 0.2707]  # each exit takes about a third

    def forward(self, x):
        confidences = []
        for i, (stage, head) in enumerate(zip(self.stages, self.heads)):
            x = torch.relu(stage(x))
            out = head(x)
            confidence = torch.max(F.softmax(out[0], dim=0))
            confidences.append(confidence)
            if confidence >= self.thresholds[i]:
                break
        return out, torch.stack(confidences)


class AnytimeExits(_Small):
    """RaNet style: `res` collects the classifiers' logits; a scale's classifier runs only when
    its gate opens; returns the list (as many outputs as exits ran)."""

    seed = 1

    def build(self):
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.classifier = nn.ModuleList([nn.Linear(8, 4) for _ in range(3)])
        self.final = nn.Linear(8, 4)
        self.gates = [-0.08, -0.12, 0.093]  # about half of random inputs open each

    def forward(self, x):
        res = []
        for i in range(len(self.blocks)):
            x = torch.tanh(self.blocks[i](x))
            if x.mean() > self.gates[i]:
                res.append(self.classifier[i](x))
        res.append(self.final(x))
        return res


class RefineTrace(_Small):
    """A data-dependent while loop that records every state; reads the list afterwards by
    `torch.cat`, a constant index and `len`, and drops its first item with `del`."""

    seed = 2
    shape = (1, 6)

    def build(self):
        self.step = nn.Linear(6, 6)

    def forward(self, x):
        states = [x]
        while x.norm() > 1.0 and len(states) < 6:
            x = 0.7 * x + 0.1 * torch.tanh(self.step(x))
            states.append(x)
        del states[0]
        states += [x * 2]
        return torch.cat(states, dim=0), states[-1] * len(states)


class MasksAndLogits(_Small):
    """Two lists made at once (`a, b = [], []`), one grown with `+=` on every path and trimmed
    with `del`, one grown under a data-dependent gate; returns a tuple holding the second."""

    seed = 3

    def build(self):
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.gates = nn.ModuleList([nn.Linear(8, 1) for _ in range(3)])

    def forward(self, x):
        masks, logits = [], []
        for layer, gate in zip(self.layers, self.gates):
            g = torch.sigmoid(gate(x)).mean()
            masks += [g.reshape(1)]
            if g > 0.5:
                x = torch.relu(layer(x))
                logits.append(x)
        del masks[-1]
        return torch.cat(masks), logits


class Captioner(_Small):
    """An RNN decoder that calls `self.rnn.flatten_parameters()` first (cuDNN weight layout)."""

    seed = 4
    shape = (1, 5, 6)

    def build(self):
        self.embed = nn.Linear(6, 8)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        self.rnn.flatten_parameters()
        h, _ = self.rnn(torch.tanh(self.embed(x)))
        y = self.out(h[:, -1])
        if y.max() > 0.2:
            y = y * 2
        return y


class Policy(_Small):
    """Actor-critic policy: forward records each action in `self.saved_actions` for the
    training loop, which forward itself never reads."""

    seed = 5

    def build(self):
        self.affine = nn.Linear(8, 16)
        self.action_head = nn.Linear(16, 4)
        self.value_head = nn.Linear(16, 1)
        self.saved_actions = []

    def forward(self, x):
        h = F.relu(self.affine(x))
        probs = F.softmax(self.action_head(h), dim=-1)
        value = self.value_head(h)
        self.saved_actions.append((probs, value))
        if value.sum() > 0:
            probs = probs.pow(2) / probs.pow(2).sum()
        return probs, value


class PolicyReadsBack(Policy):
    """Like Policy, but forward reads what it saved: the append reaches the answer."""

    def forward(self, x):
        h = F.relu(self.affine(x))
        value = self.value_head(h)
        self.saved_actions.append(value)
        if value.sum() > 0:
            h = h * len(self.saved_actions)
        return h


class MadeConstants(_Small):
    """Tensors made in forward: `torch.tensor([...])`, `torch.zeros(n)`, `Variable(...)`."""

    seed = 6

    def build(self):
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        scale = torch.tensor([1.0, 2.0, 0.5, 1.5])
        bias = Variable(torch.zeros(4))
        h = self.fc(x) * scale + bias
        if h.sum() > 0:
            h = h + torch.ones(4) * torch.tensor(0.5)
        return h
