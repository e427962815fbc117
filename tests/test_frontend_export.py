"""Export tries what works: a positional wrapper, torch.export (non-strict, strict), the
TorchScript exporter, a fixed batch; the manifest says which, and a failure names the user's
line."""

import subprocess
import sys

import export_models
import numpy as np
import pytest
import torch
from conftest import manifest
from export_models import (
    Bessel,
    MetaFusion,
    NumpyScale,
    PermutedGroups,
    StoredPermutation,
    TracingShortcut,
)

import hypercompile as hc
from hypercompile.errors import BuildError


def _build(model, tmp_path, *example):
    torch.manual_seed(0)
    model = model.eval()
    return model, hc.build(model, out=tmp_path / "b", example_inputs=example)


def _agrees(model, out, *shapes):
    b = hc.load(out)
    gen = torch.Generator().manual_seed(7)
    xs = [torch.randn(*s, generator=gen) for s in shapes]
    got = b.run({s["name"]: x.numpy() for s, x in zip(b.inputs, xs)})["output"]
    np.testing.assert_allclose(got, model(*xs).detach().numpy(), rtol=1e-4, atol=1e-5)


def _graph(out):
    (g,) = manifest(out)["graphs"].values()
    return g


def test_input_named_like_a_submodule_builds(tmp_path):
    model, out = _build(MetaFusion(), tmp_path, torch.randn(1, 4), torch.randn(1, 2))
    g = _graph(out)
    assert [i["name"] for i in g["inputs"]] == ["img", "meta"]
    # torch.export captured it; tracing the same forward wrote the graph
    assert g["exporter"] == "torch.export+torchscript" and g["dynamic_batch"]
    _agrees(model, out, (3, 4), (3, 2))


def test_a_trace_unlike_the_captured_program_is_not_kept(tmp_path):
    model, out = _build(TracingShortcut(), tmp_path, torch.randn(1, 4))
    g = _graph(out)
    assert g["exporter"] == "torch.export" and g["dynamic_batch"]  # torch.onnx's translation
    _agrees(model, out, (3, 4))


def test_a_small_model_builds_without_onnxscript(tmp_path):
    """Tracing writes the graph of a program torch.export captured: the build imports neither
    onnxscript nor TVM (their imports are most of a small model's build time)."""
    code = (
        "import sys, torch\n"
        "import hypercompile as hc\n"
        "m = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.ReLU(), torch.nn.Linear(24, 4))\n"
        f"hc.build(m, out={str(tmp_path / 'b')!r}, example_inputs=(torch.randn(1, 8),))\n"
        "print(sorted(k for k in ('onnxscript', 'tvm') if k in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_torchscript_exporter_takes_what_torch_export_refuses(tmp_path):
    model, out = _build(StoredPermutation(), tmp_path, torch.randn(1, 4))
    g = _graph(out)
    assert g["exporter"] == "torchscript" and g["dynamic_batch"]
    assert set(g["weights"]) == {"fc.weight", "fc.bias"}  # still bound per variant
    _agrees(model, out, (5, 4))


def test_a_dynamic_batch_graph_wrong_at_batch_3_falls_back_to_a_fixed_batch(tmp_path):
    model, out = _build(PermutedGroups(), tmp_path, torch.randn(1, 4))
    g = _graph(out)
    assert g["exporter"] == "torchscript" and not g["dynamic_batch"]
    assert "batch of 3" in g["fixed_batch"]
    _agrees(model, out, (1, 4))


def test_strict_tracing_follows_numpy(tmp_path):
    model, out = _build(NumpyScale(), tmp_path, torch.randn(1, 4))
    assert _graph(out)["exporter"].startswith("torch.export-strict")
    _agrees(model, out, (2, 4))


def test_when_every_exporter_fails_the_error_names_the_users_line(tmp_path):
    with pytest.raises(BuildError) as e:
        _build(Bessel(), tmp_path, torch.randn(1, 4))
    text = str(e.value)
    assert text.startswith(f"{export_models.__file__}:")
    assert "`return torch.special.bessel_j0(y)`" in text
    assert "torch.export: " in text and "torchscript: " in text and "\n" not in text
    assert not (tmp_path / "b").exists()


def test_a_trace_that_would_freeze_a_branch_on_data_is_refused(tmp_path):
    from export_models import PermutedGate

    from hypercompile.frontend.export import export_graph

    with pytest.raises(BuildError) as e:  # the exporter path alone, without the splitter
        export_graph(PermutedGate().eval(), (torch.randn(1, 4),), tmp_path / "g.onnx", "-")
    traced = str(e.value).split("torchscript: ", 1)[1]
    assert traced.startswith(f"UnsupportedModelError: {export_models.__file__}:")
    assert "would freeze" in traced
