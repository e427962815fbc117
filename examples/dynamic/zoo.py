"""A zoo of small dynamic neural networks (DyNNs) for CIFAR-sized inputs.

Every model takes one ``1x3x32x32`` float32 image (``BranchyNet``: a batch of eight) and has
Python control flow in ``forward`` that depends on tensor *values* (early exits, skipped blocks,
data-dependent loops, top-1 routing, lists whose length follows the input).
Each is written the way its paper's reference code is written -- ``getattr`` on formatted names,
``for`` over ``ModuleList``s, ``while`` loops, early ``return``, ``break``/``continue`` -- and
not simplified for a compiler. All data-dependent control flow lives in the top-level
``forward``; submodules are static.

Weights are random (fixed seed per model, built without touching the global RNG). Since the
weights are untrained, the thresholds / gate biases below are calibrated constants chosen so that
on ``torch.randn(1, 3, 32, 32)`` inputs every data-dependent branch goes both ways a reasonable
fraction of the time (see ``branch_stats.py``).

Model references for the compiler: ``examples/dynamic/zoo.py:<ClassName>``; ``ZOO`` maps short
names to zero-argument constructors (each returns the model in eval mode).
"""

# The model code keeps the idioms of the papers' reference implementations on purpose
# (str.format names, getattr with constant names, unused loop indices).
# ruff: noqa: UP032, B009, B007

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


def _example_input(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 32, 32, generator=g)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """The standard pre-activation-free ResNet basic block (He et al., 2016)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            residual = self.downsample(x)

        out += residual
        out = self.relu(out)

        return out


class _ZooModel(nn.Module):
    """Common bits: deterministic construction and an example input."""

    seed = 0

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (_example_input(self.seed),)


# ---------------------------------------------------------------------------------------------
# 1. Shallow-Deep Network: internal classifiers with confidence-based early exit
#    (Kaya et al., "Shallow-Deep Networks: Understanding and Mitigating Network Overthinking",
#    ICML 2019).
# ---------------------------------------------------------------------------------------------


class InternalClassifier(nn.Module):
    """SDN internal classifier: mixed max/avg pooling followed by a linear layer."""

    def __init__(self, input_size: int, output_channels: int, num_classes: int, alpha: float = 0.5):
        super().__init__()
        red_input_size = 4  # reduce the spatial size to 4x4 like the SDN code
        red_kernel_size = input_size // red_input_size
        self.max_pool = nn.MaxPool2d(kernel_size=red_kernel_size)
        self.avg_pool = nn.AvgPool2d(kernel_size=red_kernel_size)
        self.alpha = nn.Parameter(torch.full((1,), alpha))
        self.linear = nn.Linear(output_channels * red_input_size * red_input_size, num_classes)

    def forward(self, x):
        mixed = self.alpha * self.max_pool(x) + (1 - self.alpha) * self.avg_pool(x)
        return self.linear(mixed.view(mixed.size(0), -1))


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.layers(x)


class ShallowDeep(_ZooModel):
    """A small VGG-style SDN with three internal classifiers and a final classifier.

    Inference follows SDN's ``early_exit``: after each stage the internal classifier's softmax
    confidence is compared with the exit threshold and the network returns as soon as one is
    confident enough.
    """

    seed = 1
    # per-exit confidence thresholds (calibrated for random weights, see module docstring)
    EXIT_THRESHOLDS = (0.9655, 0.671, 0.4052)

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.init_conv = ConvBlock(3, 16)
            channels = [(16, 32, 2), (32, 32, 1), (32, 64, 2)]
            sizes = [16, 16, 8]
            self.layers = nn.ModuleList()
            self.internal_classifiers = nn.ModuleList()
            for (cin, cout, stride), size in zip(channels, sizes):
                self.layers.append(ConvBlock(cin, cout, stride))
                self.internal_classifiers.append(InternalClassifier(size, cout, num_classes))
            self.end_layers = nn.Sequential(
                ConvBlock(64, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
            )
            self.classifier = nn.Linear(64, num_classes)
            # untrained stand-ins for trained ICs: unit-variance heads give confidences spread
            # over (0.1, 1) instead of all ~1/num_classes
            for ic in self.internal_classifiers:
                nn.init.normal_(ic.linear.weight, std=1.0)
        self.confidence_thresholds = list(self.EXIT_THRESHOLDS)
        self.eval()

    def forward(self, x):
        fwd = self.init_conv(x)
        output_id = 0
        for layer, ic in zip(self.layers, self.internal_classifiers):
            fwd = layer(fwd)
            output = ic(fwd)
            softmax = F.softmax(output[0], dim=0)
            confidence = torch.max(softmax)
            if confidence >= self.confidence_thresholds[output_id]:
                return output  # early exit
            output_id += 1
        fwd = self.end_layers(fwd)
        return self.classifier(fwd)


# ---------------------------------------------------------------------------------------------
# 2. SkipNet with feed-forward gates (Wang et al., "SkipNet: Learning Dynamic Routing in
#    Convolutional Networks", ECCV 2018) -- ResNetFeedForwardSP with hard gates at inference.
# ---------------------------------------------------------------------------------------------


class FeedforwardGateI(nn.Module):
    """SkipNet FFGate-I: global average pooling + 1x1 conv to one unit + sigmoid."""

    def __init__(self, pool_size: int = 5, channel: int = 10):
        super().__init__()
        self.pool_size = pool_size
        self.channel = channel
        self.avg_layer = nn.AvgPool2d(pool_size)
        self.linear_layer = nn.Conv2d(in_channels=channel, out_channels=1, kernel_size=1, stride=1)
        self.prob_layer = nn.Sigmoid()

    def forward(self, x):
        x = self.avg_layer(x)
        x = self.linear_layer(x)
        return self.prob_layer(x)  # 1x1x1x1 probability of executing the block


class SkipNetFF(_ZooModel):
    """ResNet-20-ish (3 groups x 3 basic blocks, 16/32/64 channels) with feed-forward gates.

    The first block of every group (which changes resolution / width) is always executed, as in
    SkipNet; every other block has its own gate, computed on the block's input, and is skipped
    (identity) when the gate probability is at most 0.5.
    """

    seed = 2
    # gate biases (calibrated, see module docstring)
    GATE_BIAS = {
        "group1_gate1": -0.19372,
        "group1_gate2": 0.56194,
        "group2_gate1": -0.84732,
        "group2_gate2": -0.96718,
        "group3_gate1": 0.19741,
        "group3_gate2": 0.12509,
    }

    def __init__(self, layers=(3, 3, 3), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.num_layers = list(layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.inplanes = 16
            self.conv1 = conv3x3(3, 16)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU(inplace=True)
            self._make_group(BasicBlock, 16, layers[0], group_id=1, pool_size=32)
            self._make_group(BasicBlock, 32, layers[1], group_id=2, pool_size=16)
            self._make_group(BasicBlock, 64, layers[2], group_id=3, pool_size=8)
            self.avgpool = nn.AvgPool2d(8)
            self.fc = nn.Linear(64 * BasicBlock.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and m.out_channels != 1:
                    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    m.weight.data.normal_(0, math.sqrt(2.0 / n))
        with torch.no_grad():
            for name, bias in self.GATE_BIAS.items():
                getattr(self, name).linear_layer.bias.fill_(bias)
        self.eval()

    def _make_group(self, block, planes, layers, group_id=1, pool_size=16):
        """Create the whole group: blocks ``group{id}_layer{i}`` and gates ``group{id}_gate{i}``."""
        stride = 1 if group_id == 1 else 2
        for i in range(layers):
            downsample = None
            if i == 0 and (stride != 1 or self.inplanes != planes * block.expansion):
                downsample = nn.Sequential(
                    nn.Conv2d(
                        self.inplanes,
                        planes * block.expansion,
                        kernel_size=1,
                        stride=stride,
                        bias=False,
                    ),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layer = block(self.inplanes, planes, stride if i == 0 else 1, downsample)
            self.inplanes = planes * block.expansion
            setattr(self, "group{}_layer{}".format(group_id, i), layer)
            if i > 0:
                gate = FeedforwardGateI(pool_size=pool_size, channel=planes * block.expansion)
                setattr(self, "group{}_gate{}".format(group_id, i), gate)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)

        for g in range(3):
            for i in range(self.num_layers[g]):
                if i == 0:
                    # the first block of a group changes resolution/width: always executed
                    x = getattr(self, "group{}_layer{}".format(g + 1, i))(x)
                    continue
                gprob = getattr(self, "group{}_gate{}".format(g + 1, i))(x)
                if gprob > 0.5:
                    x = getattr(self, "group{}_layer{}".format(g + 1, i))(x)

        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


# ---------------------------------------------------------------------------------------------
# 3. SkipNet with a recurrent gate (SkipNet, ECCV 2018) -- ResNetRecurrentGateSP at inference:
#    one LSTM shared by all blocks, hidden state carried from block to block.
# ---------------------------------------------------------------------------------------------


class RNNGatePolicy(nn.Module):
    """SkipNet's recurrent gate: an LSTM over per-block gate features, linear proj + sigmoid."""

    def __init__(self, input_dim: int, hidden_dim: int, rnn_type: str = "lstm"):
        super().__init__()
        self.rnn_type = rnn_type
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        if self.rnn_type == "lstm":
            self.rnn = nn.LSTM(input_dim, hidden_dim)
        else:
            self.rnn = None
        self.proj = nn.Conv2d(in_channels=hidden_dim, out_channels=1, kernel_size=1, stride=1)
        self.prob = nn.Sigmoid()

    def init_hidden(self, batch_size: int):
        weight = self.proj.weight  # same device / dtype as the gate
        return (
            weight.new_zeros(1, batch_size, self.hidden_dim),
            weight.new_zeros(1, batch_size, self.hidden_dim),
        )

    def forward(self, x, hidden):
        batch_size = x.size(0)
        out, hidden = self.rnn(x.view(1, batch_size, -1), hidden)
        out = out.squeeze(0)
        proj = self.proj(out.view(out.size(0), out.size(1), 1, 1))
        prob = self.prob(proj)
        return prob, hidden


class SkipNetRNN(_ZooModel):
    """ResNet (3 groups x 3 basic blocks) whose blocks are gated by one shared LSTM.

    As in SkipNet-RNN, ``group1_layer0`` always runs; every later block can be skipped, including
    the first block of groups 2 and 3, in which case the group's downsample module
    ``group{g}_ds0`` is applied instead so the shapes stay right.
    """

    seed = 7
    _gate_stats_cache: dict = {}

    def __init__(
        self,
        layers=(3, 3, 3),
        num_classes: int = NUM_CLASSES,
        embed_dim: int = 10,
        hidden_dim: int = 10,
    ):
        super().__init__()
        self.num_layers = list(layers)
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.inplanes = 16
            self.conv1 = conv3x3(3, 16)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU(inplace=True)
            self._make_group(BasicBlock, 16, layers[0], group_id=1, pool_size=32)
            self._make_group(BasicBlock, 32, layers[1], group_id=2, pool_size=16)
            self._make_group(BasicBlock, 64, layers[2], group_id=3, pool_size=8)
            self.control = RNNGatePolicy(embed_dim, hidden_dim, rnn_type="lstm")
            self.avgpool = nn.AvgPool2d(8)
            self.fc = nn.Linear(64 * BasicBlock.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    m.weight.data.normal_(0, math.sqrt(2.0 / n))
            nn.init.zeros_(self.control.proj.bias)  # unbiased gate: skip/execute equally likely
        self.eval()
        self._calibrate_gate_statistics()

    @torch.no_grad()
    def _calibrate_gate_statistics(self, num_images: int = 32):
        """Stand-in for training: set the running statistics of each gate-feature BatchNorm from
        random images, gate by gate in execution order (each gate sees the routing decided by the
        already-calibrated gates before it), so the LSTM gets standardized, input-dependent
        features. Deterministic; cached per process."""
        names = [
            "group{}_gate{}".format(g + 1, i)
            for g in range(3)
            for i in range(self.num_layers[g])
            if not (g == 2 and i == self.num_layers[g] - 1)
        ]
        key = (
            type(self).__name__,
            self.seed,
            tuple(self.num_layers),
            self.embed_dim,
            self.hidden_dim,
        )
        if key not in self._gate_stats_cache:
            gen = torch.Generator().manual_seed(1000 + self.seed)
            images = [torch.randn(1, 3, 32, 32, generator=gen) for _ in range(num_images)]
            for name in names:
                proj, bn = getattr(self, name)[1], getattr(self, name)[2]
                feats = []
                hook = proj.register_forward_hook(
                    lambda mod, inp, out, f=feats: f.append(out.flatten())
                )
                for x in images:
                    self(x)
                hook.remove()
                feats = torch.stack(feats)
                bn.running_mean.copy_(feats.mean(0))
                bn.running_var.copy_(feats.var(0))
            self._gate_stats_cache[key] = {
                n: (
                    getattr(self, n)[2].running_mean.clone(),
                    getattr(self, n)[2].running_var.clone(),
                )
                for n in names
            }
        for name, (mean, var) in self._gate_stats_cache[key].items():
            getattr(self, name)[2].running_mean.copy_(mean)
            getattr(self, name)[2].running_var.copy_(var)

    def _make_group(self, block, planes, layers, group_id=1, pool_size=16):
        """Blocks ``group{id}_layer{i}``, skip-path downsamplers ``group{id}_ds{i}`` (None when the
        shapes already match) and gate-feature extractors ``group{id}_gate{i}``."""
        stride = 1 if group_id == 1 else 2
        for i in range(layers):
            downsample = None
            if i == 0 and (stride != 1 or self.inplanes != planes * block.expansion):
                downsample = nn.Sequential(
                    nn.Conv2d(
                        self.inplanes,
                        planes * block.expansion,
                        kernel_size=1,
                        stride=stride,
                        bias=False,
                    ),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layer = block(self.inplanes, planes, stride if i == 0 else 1, downsample)
            self.inplanes = planes * block.expansion
            # the skip path shares the block's shortcut projection
            setattr(self, "group{}_ds{}".format(group_id, i), downsample)
            setattr(self, "group{}_layer{}".format(group_id, i), layer)
            gate_layer = nn.Sequential(
                nn.AvgPool2d(pool_size),
                nn.Conv2d(
                    in_channels=planes * block.expansion,
                    out_channels=self.embed_dim,
                    kernel_size=1,
                    stride=1,
                ),
                nn.BatchNorm2d(self.embed_dim),
            )
            setattr(self, "group{}_gate{}".format(group_id, i), gate_layer)

    def forward(self, x):
        batch_size = x.size(0)
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)

        # reinitialize hidden units
        hidden = self.control.init_hidden(batch_size)

        masks = []
        gprobs = []
        # must pass through the first layer in first group
        x = getattr(self, "group1_layer0")(x)
        # gate takes the output of the current layer
        gate_feature = getattr(self, "group1_gate0")(x)
        gprob, hidden = self.control(gate_feature, hidden)
        gprobs.append(gprob)

        for g in range(3):
            for i in range(0 + int(g == 0), self.num_layers[g]):
                if gprob.item() > 0.5:
                    x = getattr(self, "group{}_layer{}".format(g + 1, i))(x)
                    masks.append(1)
                else:
                    if getattr(self, "group{}_ds{}".format(g + 1, i)) is not None:
                        x = getattr(self, "group{}_ds{}".format(g + 1, i))(x)
                    masks.append(0)
                # new mask is taking the current output
                if not (g == 2 and i == (self.num_layers[g] - 1)):
                    gate_feature = getattr(self, "group{}_gate{}".format(g + 1, i))(x)
                    gprob, hidden = self.control(gate_feature, hidden)
                    gprobs.append(gprob)

        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x


# ---------------------------------------------------------------------------------------------
# 4. BlockDrop (Wu et al., "BlockDrop: Dynamic Inference Paths in Residual Networks", CVPR 2018):
#    a policy network decides, from a downsampled image, which residual blocks to execute.
# ---------------------------------------------------------------------------------------------


class DownsampleB(nn.Module):
    """BlockDrop's parameter-free shortcut: average pool, then zero-pad the channels."""

    def __init__(self, nIn: int, nOut: int, stride: int):
        super().__init__()
        self.avg = nn.AvgPool2d(stride)
        self.expand_ratio = nOut // nIn

    def forward(self, x):
        x = self.avg(x)
        return torch.cat([x] + [x.mul(0)] * (self.expand_ratio - 1), 1)


class ResidualBranch(nn.Module):
    """The residual branch of a basic block (the shortcut is added by the caller)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class PolicyNet(nn.Module):
    """The BlockDrop agent: a tiny CNN on the downsampled image, one logit per block."""

    def __init__(self, num_blocks: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.logit = nn.Linear(32, num_blocks)

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.logit(x)


class BlockDrop(_ZooModel):
    """FlatResNet (3 segments x 3 blocks) driven by a BlockDrop policy.

    ``forward`` returns ``(logits, policy)`` where ``policy`` is the 1x9 binary block mask.
    """

    seed = 4
    POLICY_BIAS = [
        -0.01573,
        -0.00723,
        -0.01716,
        -0.03672,
        0.02125,
        0.01955,
        -0.1137,
        -0.02878,
        -0.0337,
    ]

    def __init__(self, layer_config=(3, 3, 3), num_classes: int = NUM_CLASSES):
        super().__init__()
        self.layer_config = list(layer_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.agent = PolicyNet(sum(layer_config))
            self.seed_conv = nn.Sequential(
                conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
            )
            self.in_planes = 16
            self.blocks, self.ds = [], []
            strides = [1, 2, 2]
            for i, (planes, n) in enumerate(zip([16, 32, 64], layer_config)):
                blocks, ds = self._make_layer(planes, n, stride=strides[i])
                self.blocks.append(nn.ModuleList(blocks))
                self.ds.append(ds)
            self.blocks = nn.ModuleList(self.blocks)
            self.ds = nn.ModuleList(self.ds)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                    m.weight.data.normal_(0, math.sqrt(2.0 / n))
        with torch.no_grad():
            self.agent.logit.bias.copy_(torch.tensor(self.POLICY_BIAS))
        self.eval()

    def _make_layer(self, planes, blocks, stride=1):
        downsample = nn.Sequential()
        if stride != 1 or self.in_planes != planes:
            downsample = DownsampleB(self.in_planes, planes, stride)
        layers = [ResidualBranch(self.in_planes, planes, stride)]
        self.in_planes = planes
        for _ in range(1, blocks):
            layers.append(ResidualBranch(self.in_planes, planes))
        return layers, downsample

    def forward(self, inputs):
        # the agent sees a 16x16 version of the image
        probs = torch.sigmoid(self.agent(F.avg_pool2d(inputs, 2)))
        policy = (probs > 0.5).float()

        x = self.seed_conv(inputs)
        t = 0
        for segment, num_blocks in enumerate(self.layer_config):
            for b in range(num_blocks):
                residual = self.ds[segment](x) if b == 0 else x
                # early termination if all residual blocks are dropped
                if policy[:, t].sum() > 0:
                    output = self.blocks[segment][b](x)
                    x = F.relu(residual + output)
                else:
                    x = residual
                t += 1

        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x, policy


# ---------------------------------------------------------------------------------------------
# 5. Iterative refinement with confidence-based halting (adaptive computation in the spirit of
#    Graves, "Adaptive Computation Time for Recurrent Neural Networks", 2016, and anytime
#    iterative-inference networks): a weight-tied refinement block is applied until the
#    classifier is confident or a step budget is exhausted.
# ---------------------------------------------------------------------------------------------


class RefineBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, h):
        out = F.relu(self.bn1(self.conv1(h)))
        return torch.tanh(self.bn2(self.conv2(out)))  # bounded update


class IterativeRefine(_ZooModel):
    seed = 5
    THRESHOLD = 0.1152
    MAX_STEPS = 5
    STEP_SIZE = 0.5

    def __init__(self, channels: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = nn.Sequential(
                nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(inplace=True),
                nn.Conv2d(16, channels, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            self.refine = RefineBlock(channels)
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
            )
        self.threshold = self.THRESHOLD
        self.max_steps = self.MAX_STEPS
        self.step_size = self.STEP_SIZE
        self.eval()

    def forward(self, x):
        h = self.encoder(x)
        logits = self.head(h)
        conf = F.softmax(logits, dim=1).max()
        steps = 0
        while conf < self.threshold and steps < self.max_steps:
            h = h + self.step_size * self.refine(h)
            logits = self.head(h)
            conf = F.softmax(logits, dim=1).max()
            steps += 1
        return logits


# ---------------------------------------------------------------------------------------------
# 6. Top-1 mixture of experts (Switch-style routing: Fedus et al., "Switch Transformers", 2021;
#    Shazeer et al., "Outrageously Large Neural Networks", 2017) with convolutional experts.
# ---------------------------------------------------------------------------------------------


class ConvExpert(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels * 2, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels * 2)
        self.conv2 = nn.Conv2d(channels * 2, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class TopOneMoE(_ZooModel):
    seed = 6
    ROUTER_BIAS = [0.04377, 0.17791, -0.01143, -0.21025]

    def __init__(self, channels: int = 32, num_experts: int = 4, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.num_experts = num_experts
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.stem = nn.Sequential(
                nn.Conv2d(3, channels, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            self.router = nn.Linear(channels, num_experts)
            self.experts = nn.ModuleList([ConvExpert(channels) for _ in range(num_experts)])
            self.head = nn.Sequential(
                nn.Conv2d(channels, 64, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(64, num_classes),
            )
        with torch.no_grad():
            self.router.bias.copy_(torch.tensor(self.ROUTER_BIAS))
        self.eval()

    def forward(self, x):
        x = self.stem(x)
        route_logits = self.router(F.adaptive_avg_pool2d(x, 1).flatten(1))
        route_probs = F.softmax(route_logits, dim=1)
        idx = route_logits.argmax(dim=1)
        # Switch routing: the selected expert's output is scaled by its router probability
        gate = route_probs[0, idx].view(1, 1, 1, 1)
        x = x + gate * self.experts[int(idx)](x)
        return self.head(F.relu(x))


# ---------------------------------------------------------------------------------------------
# 7. Nested control flow: an ``if`` around a ``for`` over blocks with an inner ``if ...: break``
#    (input-dependent path selection plus dynamic depth, the kind of nesting DyCL's evaluation
#    stresses).
# ---------------------------------------------------------------------------------------------


class NestedIfLoopIf(_ZooModel):
    seed = 7
    T0 = 0.21574
    T1 = 0.22385
    RESIDUAL_GAMMA = 0.05  # small last-BN scale ("zero-init residual"-style), ...
    RESIDUAL_BETA = 0.002  # ... and a small positive shift: activations grow slowly with depth

    def __init__(self, channels: int = 32, num_blocks: int = 4, num_classes: int = NUM_CLASSES):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.stem = nn.Sequential(
                nn.Conv2d(3, channels, kernel_size=3, stride=2, padding=1),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            self.blocks = nn.ModuleList([BasicBlock(channels, channels) for _ in range(num_blocks)])
            self.alt = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
            )
            for blk in self.blocks:
                nn.init.constant_(blk.bn2.weight, self.RESIDUAL_GAMMA)
                nn.init.constant_(blk.bn2.bias, self.RESIDUAL_BETA)
        self.t0 = self.T0
        self.t1 = self.T1
        self.eval()

    def forward(self, x):
        x = self.stem(x)
        if x.mean() > self.t0:
            for blk in self.blocks:
                x = blk(x)
                if x.abs().mean() > self.t1:
                    break
        else:
            x = self.alt(x)
        return self.head(x)


# ---------------------------------------------------------------------------------------------
# 8. Shallow-Deep Network, SDN's ``early_exit`` as written: every internal classifier's output
#    is kept in ``outputs`` and the list up to the exit is returned (a list whose length depends
#    on the input).
# ---------------------------------------------------------------------------------------------


class ShallowDeepOutputs(ShallowDeep):
    """The ShallowDeep network (same weights) returning ``outputs``, the list of the classifier
    outputs computed before it exits: one to four ``1x10`` logits."""

    def forward(self, x):
        outputs = []
        fwd = self.init_conv(x)
        output_id = 0
        for layer, ic in zip(self.layers, self.internal_classifiers):
            fwd = layer(fwd)
            output = ic(fwd)
            outputs.append(output)
            softmax = F.softmax(output[0], dim=0)
            confidence = torch.max(softmax)
            if confidence >= self.confidence_thresholds[output_id]:
                return outputs  # early exit, with every output so far
            output_id += 1
        fwd = self.end_layers(fwd)
        outputs.append(self.classifier(fwd))
        return outputs


# ---------------------------------------------------------------------------------------------
# 9. RaNet (Yang et al., "Resolution Adaptive Networks for Efficient Inference", CVPR 2020): an
#    anytime network that classifies a low-resolution copy of the image first and moves on to
#    higher resolutions, fusing the coarser features, only while no classifier is confident.
# ---------------------------------------------------------------------------------------------


class ScaleFlow(nn.Module):
    """One RaNet sub-network: two conv layers at its resolution; the coarser scale's features
    are upsampled and added (RaNet's dense fusion, reduced to one link)."""

    def __init__(self, in_channels: int, channels: int, low_channels: int = 0):
        super().__init__()
        self.conv = nn.Sequential(ConvBlock(in_channels, channels), ConvBlock(channels, channels))
        self.fuse = nn.Conv2d(low_channels, channels, kernel_size=1) if low_channels else None

    def forward(self, x, low=None):
        x = self.conv(x)
        if self.fuse is not None:
            x = x + F.interpolate(self.fuse(low), size=x.shape[-2:], mode="nearest")
        return x


class RaNet(_ZooModel):
    """Three scales (8x8, 16x16, 32x32 inputs), a classifier after each; ``res`` collects the
    classifier outputs and the loop ``break``s at the first confident one. Returns ``res``
    (one to three ``1x10`` logits)."""

    seed = 8
    THRESHOLDS = (0.6044, 0.8159)  # the last scale always answers

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.nScales = 3
            self.scale_flows = nn.ModuleList()
            self.classifier = nn.ModuleList()
            channels = [32, 24, 16]  # coarse scales get the wider sub-networks, as in RaNet
            for i, c in enumerate(channels):
                self.scale_flows.append(ScaleFlow(3, c, channels[i - 1] if i else 0))
                self.classifier.append(
                    nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
                )
            for cls in self.classifier:
                nn.init.normal_(cls[-1].weight, std=10.0)  # spread confidences (untrained)
        self.thresholds = list(self.THRESHOLDS)
        self.eval()

    def forward(self, x):
        inp_list = []
        for i in range(self.nScales):
            inp_list.append(F.avg_pool2d(x, 2 ** (self.nScales - 1 - i)))  # coarse first
        res = []
        low = None
        for i in range(self.nScales):
            low = self.scale_flows[i](inp_list[i], low)
            res.append(self.classifier[i](low))
            if i < self.nScales - 1:
                confidence = F.softmax(res[-1], dim=1).max()
                if confidence >= self.thresholds[i]:
                    break
        return res


# ---------------------------------------------------------------------------------------------
# 10. Image captioning, Show and Tell style (Vinyals et al., CVPR 2015; the widely copied
#     pytorch-tutorial `DecoderRNN.sample`): a CNN encoder and an LSTM decoder that decodes
#     greedily until it emits the end token. The decoder calls ``flatten_parameters()`` first,
#     an effect on the cuDNN weight layout that reaches no output.
# ---------------------------------------------------------------------------------------------


class EncoderCNN(nn.Module):
    def __init__(self, embed_size: int):
        super().__init__()
        self.cnn = nn.Sequential(
            ConvBlock(3, 16, stride=2), ConvBlock(16, 32, stride=2), nn.AdaptiveAvgPool2d(1)
        )
        self.linear = nn.Linear(32, embed_size)
        self.bn = nn.BatchNorm1d(embed_size, momentum=0.01)

    def forward(self, images):
        features = self.cnn(images)
        features = features.reshape(features.size(0), -1)
        return self.bn(self.linear(features))


class ImageCaptioner(_ZooModel):
    """Returns ``sampled_ids``, a ``1xL`` int64 tensor of word ids, ``L`` from 1 to
    ``max_seg_length``: the words up to and including the end token."""

    seed = 9
    END_BIAS = 0.3  # calibrated: captions end after 1 to 5 words on random images, or not at all

    def __init__(
        self,
        embed_size: int = 32,
        hidden_size: int = 48,
        vocab_size: int = 40,
        max_seg_length: int = 5,
    ):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = EncoderCNN(embed_size)
            self.embed = nn.Embedding(vocab_size, embed_size)
            self.rnn = nn.LSTM(embed_size, hidden_size, 1, batch_first=True)
            self.linear = nn.Linear(hidden_size, vocab_size)
        self.end_id = 2  # <end>
        self.max_seg_length = max_seg_length
        self.eval()
        self._stand_in_for_training()

    @torch.no_grad()
    def _stand_in_for_training(self, num_images: int = 256):
        """Untrained stand-ins: the feature BatchNorm's running statistics from random images
        (so the features vary with the image), sharper word scores, and an end-token bias."""
        g = torch.Generator().manual_seed(self.seed)
        images = torch.randn(num_images, 3, 32, 32, generator=g)
        f = self.encoder.linear(self.encoder.cnn(images).flatten(1))
        self.encoder.bn.running_mean.copy_(f.mean(0))
        self.encoder.bn.running_var.copy_(f.var(0))
        self.linear.weight.mul_(3.0)
        self.linear.bias[self.end_id] += self.END_BIAS

    def example_inputs(self) -> tuple[torch.Tensor]:
        return (_example_input(6),)  # five words, no <end> (a one-word caption is always <end>)

    def sample_inputs(self, cond, n):
        """Parity inputs for hypercompile: random images from a seed on which the caption ends
        after each of the 1..5 words at least twice in 50 images (each end is rare)."""
        g = torch.Generator().manual_seed(10)
        return [(torch.randn(1, 3, 32, 32, generator=g),) for _ in range(n)]

    def forward(self, images):
        features = self.encoder(images)
        self.rnn.flatten_parameters()
        sampled_ids = []
        inputs = features.unsqueeze(1)
        states = None
        for i in range(self.max_seg_length):
            hiddens, states = self.rnn(inputs, states)  # hiddens: (1, 1, hidden_size)
            outputs = self.linear(hiddens.squeeze(1))  # outputs: (1, vocab_size)
            _, predicted = outputs.max(1)  # predicted: (1,)
            sampled_ids.append(predicted)
            if predicted.item() == self.end_id:
                break
            inputs = self.embed(predicted)  # inputs: (1, embed_size)
            inputs = inputs.unsqueeze(1)  # inputs: (1, 1, embed_size)
        sampled_ids = torch.stack(sampled_ids, 1)  # sampled_ids: (1, L)
        return sampled_ids


# ---------------------------------------------------------------------------------------------
# 11. Per-sample early exit at batch 8, BranchyNet style (Teerapittayanon et al., "BranchyNet:
#     Fast Inference via Early Exiting from Deep Neural Networks", ICPR 2016): samples whose
#     first-branch softmax entropy is low leave there; the others go on through the trunk, and
#     their answers are written back in place, ``out[hard] = ...``.
# ---------------------------------------------------------------------------------------------


class BranchyNet(_ZooModel):
    """A small CNN with one side branch; takes a batch of eight ``3x32x32`` images and returns
    ``8x10`` logits, each from the exit its sample took. The shared trunk is convolutional; the
    side branch and the rest of the trunk are fully connected (convolutions on the
    data-dependent sub-batch ``h[hard]`` do not export, see README.md)."""

    seed = 10
    batch_size = 8
    ENTROPY_THRESHOLD = 0.52  # calibrated: about 3 in 4 samples exit early; a batch goes on
    # through the trunk unless all eight do

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.stage1 = nn.Sequential(
                ConvBlock(3, 16, stride=2),
                ConvBlock(16, 32, stride=2),
                nn.AdaptiveAvgPool2d(2),
                nn.Flatten(),
            )
            self.branch1 = nn.Linear(128, num_classes)
            self.stage2 = nn.Sequential(nn.Linear(128, 256), nn.ReLU(inplace=True))
            self.exit = nn.Linear(256, num_classes)
            nn.init.normal_(self.branch1.weight, std=10.0)  # spread entropies (untrained)
        self.threshold = self.ENTROPY_THRESHOLD
        self.eval()

    def example_inputs(self) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        return (torch.randn(self.batch_size, 3, 32, 32, generator=g),)

    def forward(self, x):
        h = self.stage1(x)
        logits = self.branch1(h)
        p = F.softmax(logits, dim=1)
        entropy = -(p * torch.log(p)).sum(dim=1)
        out = logits.clone()
        hard = entropy > self.threshold
        if hard.any():
            out[hard] = self.exit(self.stage2(h[hard]))
        return out


# ---------------------------------------------------------------------------------------------
# 12. BlockDrop as its reference code (and DyCL's copy of it) writes the ResNet's forward:
#     ``action.data`` in the skip test, ``continue``, and the block's output blended in with
#     the action mask.
# ---------------------------------------------------------------------------------------------


class BlockDropData(BlockDrop):
    """The BlockDrop model (same weights) with the reference ``forward``; returns
    ``(logits, policy)``."""

    def forward(self, inputs):
        probs = torch.sigmoid(self.agent(F.avg_pool2d(inputs, 2)))
        policy = (probs > 0.5).float()

        x = self.seed_conv(inputs)
        t = 0
        for segment, num_blocks in enumerate(self.layer_config):
            for b in range(num_blocks):
                action = policy[:, t].contiguous()
                residual = self.ds[segment](x) if b == 0 else x

                # early termination if all actions in the batch are zero
                if action.data.sum() == 0:
                    x = residual
                    t += 1
                    continue

                action_mask = action.float().view(-1, 1, 1, 1)
                fx = F.relu(residual + self.blocks[segment][b](x))
                x = fx * action_mask + residual * (1 - action_mask)
                t += 1

        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        x = self.fc(x)
        return x, policy


ZOO = {
    "shallow_deep": ShallowDeep,
    "skipnet_ff": SkipNetFF,
    "skipnet_rnn": SkipNetRNN,
    "blockdrop": BlockDrop,
    "iterative_refine": IterativeRefine,
    "top1_moe": TopOneMoE,
    "nested_if_loop_if": NestedIfLoopIf,
    "shallow_deep_outputs": ShallowDeepOutputs,
    "ranet": RaNet,
    "captioner": ImageCaptioner,
    "branchynet_b8": BranchyNet,
    "blockdrop_data": BlockDropData,
}
