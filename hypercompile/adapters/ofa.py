"""Adapter for Once-for-All (PyPI `ofa`): an elastic supernet (`OFAMobileNetV3`,
`OFAProxylessNASNets`, `OFAResNets`) from which `set_active_subnet(...)` and
`get_active_subnet()` cut a static network per architecture config.

Each condition names a config; its variant is the subnet OFA extracts, with the supernet's
weights, and `reference()` runs the supernet itself with that config active (OFA's elastic
forward), so parity checks OFA's extraction against OFA's own evaluation.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import BuildError

_DATALOADER = "ofa.utils.my_dataloader"


def import_ofa_networks() -> types.ModuleType:
    """`ofa.imagenet_classification.elastic_nn.networks`. Every ofa module imports `ofa.utils`,
    which imports ofa's ImageNet data loader (torchvision, PIL) though no network uses it:
    without torchvision that one subpackage is an empty module while ofa is imported, and is
    dropped again, so importing it later fails as it would have."""
    if importlib.util.find_spec("ofa") is None:
        raise BuildError("the OFA adapter needs `pip install ofa`")
    name = "ofa.imagenet_classification.elastic_nn.networks"
    if "ofa.utils" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module(name)
    stub = types.ModuleType(_DATALOADER, "stand-in: ofa's data loader needs torchvision")
    stub.__all__ = []  # type: ignore[attr-defined]
    sys.modules[_DATALOADER] = stub
    try:
        return importlib.import_module(name)
    finally:
        if sys.modules.get(_DATALOADER) is stub:
            del sys.modules[_DATALOADER]


def _family(supernet: nn.Module) -> dict[str, tuple[Any, ...]]:
    """The config keys the supernet takes and the values each may have."""
    if hasattr(supernet, "ks_list") and hasattr(supernet, "block_group_info"):  # MBv3, Proxyless
        return {
            "ks": tuple(supernet.ks_list),
            "e": tuple(supernet.expand_ratio_list),
            "d": tuple(supernet.depth_list),
        }
    if hasattr(supernet, "width_mult_list"):  # ResNets: w is an index into width_mult_list
        return {
            "d": tuple(supernet.depth_list),
            "e": tuple(supernet.expand_ratio_list),
            "w": tuple(range(len(supernet.width_mult_list))),
        }
    raise BuildError(f"OFA: unknown supernet {type(supernet).__name__}")


class OFAModel:
    """HyperModel over an OFA supernet, one variant per architecture config.

    `archs` is either a mapping of names to configs (conditions `{"arch": name}`; a config's
    values are a scalar for every layer or OFA's per-layer lists), or a list of scalar configs
    applied to every layer (each is its own condition, e.g. `{"ks": 3, "e": 4, "d": 2}`).
    `arch_config(cond)` gives the per-layer config OFA activates for a condition.
    """

    def __init__(
        self,
        supernet: nn.Module,
        archs: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
        *,
        image_size: int = 224,
    ):
        self.supernet = supernet.eval()
        self.allowed = _family(supernet)
        if isinstance(archs, Mapping):
            self.named = {str(k): dict(v) for k, v in archs.items()}
            self._conds = [{"arch": k} for k in self.named]
        else:
            self.named = None
            self._conds = [dict(a) for a in archs]
            for c in self._conds:
                if not all(isinstance(v, (int, float)) for v in c.values()):
                    raise BuildError(f"OFA: config {c!r}: name it in a dict to use lists")
        for c in self._conds:
            self._check(self._config(c))
        self.image_size = int(image_size)

    def conditions(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self._conds]

    def selectable(self) -> list[str]:
        """Every key: the subnets are versions of one network, so a budget may choose any."""
        return list(dict.fromkeys(k for c in self._conds for k in c))

    def _config(self, cond: dict[str, Any]) -> dict[str, Any]:
        if self.named is not None:
            arch = cond.get("arch")
            if arch not in self.named:
                raise BuildError(f"OFA: unknown arch {arch!r} (known: {', '.join(self.named)})")
            return self.named[arch]
        if cond not in self._conds:
            raise BuildError(f"OFA: unknown config {cond!r}")
        return cond

    def _check(self, config: dict[str, Any]) -> None:
        """OFA takes any value and ignores unknown keys; a typo would build the wrong net."""
        for key, value in config.items():
            if key not in self.allowed:
                raise BuildError(f"OFA: config key {key!r} (takes {', '.join(self.allowed)})")
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v not in self.allowed[key]:
                    raise BuildError(f"OFA: {key}={v!r} is not in {list(self.allowed[key])}")

    def _activate(self, cond: dict[str, Any]) -> None:
        """The config on top of the largest net, so that keys it leaves out are the maximum
        and not whatever the last condition set."""
        config = self._config(cond)
        self.supernet.set_max_net()
        self.supernet.set_active_subnet(**{k: _list(v) for k, v in config.items()})

    def arch_config(self, cond: dict[str, Any]) -> dict[str, list[int]]:
        """The per-layer config of `cond`: for MobileNetV3 and ProxylessNAS as the supernet
        holds it once activated (`ks`, `e` per block after the first, `d` per stage); for
        ResNets, OFA's own expansion of the config (`d` stem + stages, `e` per block, `w`
        width indices for the two stem convolutions and each stage)."""
        self._activate(cond)
        net = self.supernet
        if "ks" in self.allowed:
            return {
                "ks": [b.conv.active_kernel_size for b in net.blocks[1:]],
                "e": [b.conv.active_expand_ratio for b in net.blocks[1:]],
                "d": list(net.runtime_depth),
            }
        from ofa.utils import val2list

        stages = len(net.grouped_block_index)
        lengths = {"d": stages + 1, "e": len(net.blocks), "w": stages + 2}
        config = self._config(cond)
        top = {k: max(v) for k, v in self.allowed.items()}
        return {k: val2list(_list(config.get(k, top[k])), n) for k, n in lengths.items()}

    def build(self, cond: dict[str, Any]) -> nn.Module:
        self._activate(cond)
        return self.supernet.get_active_subnet(preserve_weight=False).eval()

    def generate(self, cond: dict[str, Any]) -> dict[str, torch.Tensor]:
        self._activate(cond)
        subnet = self.supernet.get_active_subnet(preserve_weight=True)
        return {k: v.detach().clone() for k, v in subnet.state_dict().items()}

    def example_inputs(self, cond: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(1234)
        return (torch.randn((1, 3, self.image_size, self.image_size), generator=gen),)

    def reference(self, cond: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """OFA's own evaluation: the supernet's elastic forward with the config active."""
        self._activate(cond)
        with torch.no_grad():
            return self.supernet(x)


def _list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
