"""Adapters for hyperlight and OFA, and snntorch models as written in its tutorials, with the
real PyPI packages: bundles run through ONNX Runtime and are compared with the library's own
eager evaluation."""

import sys

import numpy as np
import pytest
import torch
from conftest import manifest
from torch import nn

import hypercompile as hc


def assert_close(got: np.ndarray, want: torch.Tensor) -> None:
    """Within 1e-4 of the output's magnitude (and never trivially: the output is not zero)."""
    want = want.detach().numpy()
    scale = float(np.abs(want).max())
    assert scale > 0
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-4 * max(scale, 1e-2)


# -- hyperlight ----------------------------------------------------------------------------------


def hyperlight_model(grid=(0.0, 0.5, 1.0)):
    """hyperlight's README recipe: hypernetize a main net's convolution and linear layers and
    let a HyperNet predict them from one hyperparameter h; batch norm stays the main net's."""
    hl = pytest.importorskip("hyperlight")
    from hypercompile.adapters.hyperlight import HyperlightModel

    torch.manual_seed(0)
    main = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    main[1].running_mean.uniform_(-1, 1)
    main[1].running_var.uniform_(0.5, 2.0)
    main = hl.hypernetize(main, modules=hl.find_modules_of_type(main, [nn.Conv2d, nn.Linear]))
    hnet = hl.HyperNet(
        input_shapes={"h": (1,)}, output_shapes=main.external_shapes(), hidden_sizes=[16]
    )
    return HyperlightModel(hnet, main, {"h": list(grid)}, input_shape=(1, 2, 6, 6))


def test_hyperlight_variant_per_grid_point(tmp_path):
    hm = hyperlight_model()
    out = hc.build(hm, out=tmp_path / "grid")
    assert len(manifest(out)["graphs"]) == 1  # one architecture, a weight file per h
    b = hc.load(out)
    assert b.variants == [{"h": 0.0}, {"h": 0.5}, {"h": 1.0}]
    (name,) = [i["name"] for i in manifest(out)["inputs"]]
    gen = torch.Generator().manual_seed(3)
    outs = []
    for cond in b.variants:
        for batch in (1, 5):
            x = torch.randn(batch, 2, 6, 6, generator=gen)
            got = b.run({name: x.numpy()}, **cond)["output"]
            assert_close(got, hm.reference(cond, x))
        outs.append(got)
    assert not np.allclose(outs[0], outs[2])  # the hypernet's weights differ per h


def test_hyperlight_fused_graph_takes_h_as_input(tmp_path):
    hm = hyperlight_model()
    out = hc.build(hm.fused(), out=tmp_path / "fused")
    m = manifest(out)
    assert len(m["graphs"]) == 1 and len(m["variants"]) == 1
    assert [(i["name"], i["shape"]) for i in m["inputs"]] == [("x", ["batch", 2, 6, 6]), ("h", [])]
    b = hc.load(out)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, 6, 6, generator=gen)
    got = {}
    for h in (0.3, 0.9):  # not on the grid: the hypernet runs inside the graph
        got[h] = b.run({"x": x.numpy(), "h": np.array(h, np.float32)})["output"]
        assert_close(got[h], hm.reference({"h": h}, x))
    assert not np.allclose(got[0.3], got[0.9])


def test_hyperlight_plain_target_and_refusals():
    from hypercompile.adapters.hyperlight import plain_mainnet

    hm = hyperlight_model()
    target = plain_mainnet(hm.mainnet)
    assert type(target) is nn.Sequential and type(target[0]) is nn.Conv2d
    assert set(hm.hypernet.output_shapes) <= set(target.state_dict())
    assert hm.generate({"h": 0.5}).keys() == target.state_dict().keys()
    with pytest.raises(hc.BuildError, match=r"condition \{'t': 1\} must name \['h'\]"):
        hm.generate({"t": 1})
    with pytest.raises(hc.BuildError, match="grid keys"):
        type(hm)(hm.hypernet, hm.mainnet, {"lr": [0.1]}, input_shape=(1, 2, 6, 6))


def test_hyperlight_layers_and_two_hyperparameters():
    """hyperlight's own HyperLinear and a product grid over two hyperparameters: the target,
    loaded with generate(), answers as hyperlight's path does (eager; the build is the same
    as above)."""
    hl = pytest.importorskip("hyperlight")
    from hypercompile.adapters.hyperlight import HyperlightModel, plain_mainnet

    class Main(hl.HyperModule):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = hl.HyperLinear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.l2(torch.relu(self.l1(x)))

    torch.manual_seed(0)
    main = Main()
    hnet = hl.HyperNet(
        input_shapes={"a": (1,), "b": (1,)},
        output_shapes=main.external_shapes(),
        hidden_sizes=[8],
        encoding="z|1-z",
    )
    hm = HyperlightModel(hnet, main, {"b": [0.5], "a": [0.1, 0.9]}, input_shape=(1, 6))
    assert hm.conditions() == [{"a": 0.1, "b": 0.5}, {"a": 0.9, "b": 0.5}]
    x = torch.randn(4, 6)
    for cond in hm.conditions():
        target = plain_mainnet(main)
        target.load_state_dict(hm.generate(cond), strict=True)
        with torch.no_grad():
            assert_close(target(x).numpy(), hm.reference(cond, x))
    with pytest.raises(hc.BuildError, match="fused\\(\\) takes one hyperparameter"):
        hm.fused()


# -- OFA -----------------------------------------------------------------------------------------


def ofa_supernet():
    pytest.importorskip("ofa")
    from hypercompile.adapters.ofa import import_ofa_networks

    nets = import_ofa_networks()
    torch.manual_seed(0)
    net = nets.OFAMobileNetV3(
        n_classes=10,
        width_mult=0.25,
        ks_list=[3, 5],
        expand_ratio_list=[2, 3],
        depth_list=[1, 2],
        dropout_rate=0,
    )
    for m in net.modules():  # random statistics, so that batch norm is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


ARCHS = {
    "small": {"ks": 3, "e": 2, "d": 1},
    "mixed": {"ks": [3, 5] * 5, "e": 3, "d": [1, 2, 1, 2, 2]},
}


@pytest.mark.slow
def test_ofa_subnet_per_architecture(tmp_path):
    from hypercompile.adapters.ofa import OFAModel

    hm = OFAModel(ofa_supernet(), ARCHS, image_size=32)
    assert hm.arch_config({"arch": "mixed"}) == {
        "ks": [3, 5] * 5,
        "e": [3] * 10,
        "d": [1, 2, 1, 2, 2],
    }
    out = hc.build(hm, out=tmp_path / "ofa")
    assert len(manifest(out)["graphs"]) == 2  # a graph per architecture
    b = hc.load(out)
    assert b.variants == [{"arch": "small"}, {"arch": "mixed"}]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    got = {}
    for cond in b.variants:
        got[cond["arch"]] = b.run({"x": x.numpy()}, **cond)["output"]
        assert_close(got[cond["arch"]], hm.reference(cond, x))  # the supernet's own forward
    assert not np.allclose(got["small"], got["mixed"])


def test_ofa_configs_are_checked():
    from hypercompile.adapters.ofa import OFAModel

    net = ofa_supernet()
    uniform = OFAModel(net, [{"ks": 3, "e": 2, "d": 1}, {"ks": 5, "e": 3, "d": 2}])
    assert uniform.conditions() == [{"ks": 3, "e": 2, "d": 1}, {"ks": 5, "e": 3, "d": 2}]
    assert uniform.arch_config({"ks": 5, "e": 3, "d": 2})["d"] == [2] * 5
    # keys left out are the largest value, whatever was active before
    assert OFAModel(net, {"k3": {"ks": 3}}).arch_config({"arch": "k3"})["e"] == [3] * 10
    with pytest.raises(hc.BuildError, match=r"ks=7 is not in \[3, 5\]"):
        OFAModel(net, [{"ks": 7}])
    with pytest.raises(hc.BuildError, match="config key 'w'"):
        OFAModel(net, {"a": {"w": 1}})
    with pytest.raises(hc.BuildError, match="unknown arch 'big'"):
        OFAModel(net, ARCHS).build({"arch": "big"})


def test_ofa_imports_without_torchvision():
    """ofa's networks import; its data loader (torchvision) is not left stubbed."""
    pytest.importorskip("ofa")
    from hypercompile.adapters.ofa import import_ofa_networks

    assert hasattr(import_ofa_networks(), "OFAMobileNetV3")
    if "torchvision" not in sys.modules:
        assert "ofa.utils.my_dataloader" not in sys.modules


# -- snntorch ------------------------------------------------------------------------------------

NUM_STEPS = 5


def snn_tutorial_net():
    """snntorch tutorial 5's network, as written there: fixed steps, explicit membranes."""
    snn = pytest.importorskip("snntorch")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.lif1 = snn.Leaky(beta=0.9)
            self.fc2 = nn.Linear(16, 4)
            self.lif2 = snn.Leaky(beta=0.9)

        def forward(self, x):
            mem1 = self.lif1.init_leaky()
            mem2 = self.lif2.init_leaky()
            spk2_rec = []
            mem2_rec = []
            for _step in range(NUM_STEPS):
                cur1 = self.fc1(x)
                spk1, mem1 = self.lif1(cur1, mem1)
                cur2 = self.fc2(spk1)
                spk2, mem2 = self.lif2(cur2, mem2)
                spk2_rec.append(spk2)
                mem2_rec.append(mem2)
            return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)

    torch.manual_seed(0)
    return Net().eval()


def test_snntorch_tutorial_net_builds_unmodified(tmp_path):
    net = snn_tutorial_net()
    x = 2 * torch.randn(1, 8)
    b = hc.load(hc.build(net, out=tmp_path / "snn", example_inputs=(x,)))
    for batch in (1, 7):
        xb = 2 * torch.randn(batch, 8)
        got = b.run({"x": xb.numpy()})
        with torch.no_grad():
            spk, mem = net(xb)
        assert np.array_equal(got["output_0"], spk.numpy())
        assert_close(got["output_1"], mem)


def test_snntorch_hidden_state_between_calls_is_refused_not_frozen(tmp_path):
    """With `init_hidden=True` snntorch keeps each membrane between calls (one call per time
    step). The membrane only gets its shape on the first call, so no graph can carry it: the
    build refuses at snntorch's line instead of freezing it."""
    snn = pytest.importorskip("snntorch")

    class StepNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.lif1 = snn.Leaky(beta=0.9, init_hidden=True)
            self.fc2 = nn.Linear(16, 4)
            self.lif2 = snn.Leaky(beta=0.9, init_hidden=True, output=True)

        def forward(self, x):
            spk1 = self.lif1(self.fc1(x))
            return self.lif2(self.fc2(spk1))

    with pytest.raises(hc.UnsupportedModelError, match=r"leaky\.py:\d+: .*later call answers"):
        hc.build(StepNet(), out=tmp_path / "snn", example_inputs=(2 * torch.randn(1, 8),))
    assert not (tmp_path / "snn").exists()
