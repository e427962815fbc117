"""Generator storage (`build --storage generate|auto`): a hypernet stored as its own graph with
each condition's inputs, instead of every condition's weights; parity through the generator;
conditions not listed at build time, only on request and marked unverified; fp16 weights; the
storage plan's choices; hostile manifests refused in one line; a torch-free runtime."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import manifest, write_manifest

import hypercompile as hc
from hypercompile import BundleError, ConditionError, UnverifiedConditionWarning

pytest.importorskip("hypnettorch", reason="hypnettorch is a dev dependency")
from hypnettorch.hnets import HMLP  # noqa: E402
from hypnettorch.mnets import MLP  # noqa: E402

from hypercompile.adapters.hypnettorch import HypnettorchModel  # noqa: E402

TASKS = 300


def continual_hnet(num_tasks: int = TASKS) -> HypnettorchModel:
    """A continual-learning hypernet as hypnettorch users write one: an HMLP with a task
    embedding per task generating an MLP (random init, hyperfan-initialized)."""
    torch.manual_seed(0)
    mnet = MLP(n_in=16, n_out=4, hidden_layers=(32,), no_weights=True, verbose=False)
    hnet = HMLP(
        mnet.param_shapes, cond_in_size=8, layers=(16, 16), num_cond_embs=num_tasks, verbose=False
    )
    hnet.apply_hyperfan_init(mnet=mnet)
    return HypnettorchModel(hnet, mnet)


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _hnet_answer(hm: HypnettorchModel, embedding: np.ndarray, x: np.ndarray) -> np.ndarray:
    """hypnettorch's own path for any task embedding: hnet(cond_input=e), then the main net."""
    with torch.no_grad():
        weights = hm.hnet.forward(cond_input=torch.from_numpy(embedding).reshape(1, -1))
        return hm.mnet.forward(torch.from_numpy(x), weights=weights).numpy()


@pytest.fixture(scope="module")
def hnet300(tmp_path_factory):
    """The 300-task hypernet built both ways (read only)."""
    hm = continual_hnet()
    root = tmp_path_factory.mktemp("g")
    gen = hc.build(hm, out=root / "gen", storage="generate")
    mat = hc.build(hm, out=root / "mat", storage="materialize", parity_inputs=0)
    return hm, gen, mat


def test_generated_bundle_is_a_fraction_of_the_materialized_one(hnet300):
    hm, gen, mat = hnet300
    assert _bytes(gen) <= 0.3 * _bytes(mat)
    m, mm = manifest(gen), manifest(mat)
    assert m["schema_version"] == 3 and mm["schema_version"] == 2
    assert list(m["generators"]) == ["gen0"]
    g = m["generators"]["gen0"]
    assert g["target"] == "g0" and g["graph"] == "gen0"
    assert g["inputs"] == [
        {"name": "input_0", "dtype": "float32", "shape": [8], "stored": True, "key": "embedding"}
    ]
    assert sorted(g["outputs"].values()) == sorted(m["graphs"]["g0"]["weights"])
    # each variant stores its task embedding only, 32 bytes
    assert all(
        v["weights"] == {} and set(v["generated"]["inputs"]) == {"input_0"} for v in m["variants"]
    )
    st = m["graphs"]["g0"]["storage"]
    assert st["mode"] == "generate" and st["variants"] == TASKS
    assert st["materialized_bytes"] == mm["weight_bytes"]
    assert st["generated_bytes"] == m["weight_bytes"] < 0.1 * mm["weight_bytes"]
    assert st["input_bytes_per_variant"] == 32
    assert {"switch_ms", "materialized_switch_ms", "call_ms"} <= set(st)


def test_every_task_matches_hypnettorch_through_the_generator(hnet300):
    hm, gen, _ = hnet300
    m = manifest(gen)
    assert max(v["parity"]["onnxruntime"]["max_rel"] for v in m["variants"]) <= 1e-5
    b = hc.load(gen, cache_size=4)
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    for t in range(0, TASKS, 7):
        want = hm.reference({"task": t}, torch.from_numpy(x)).numpy()
        got = b.run({"x": x}, task=t)["output"]
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    v = b.select(task=5)
    assert not v.unverified and v.generated["generator"] == "gen0"


def test_unlisted_condition_needs_allow_unlisted_and_is_marked_unverified(hnet300):
    hm, gen, _ = hnet300
    b = hc.load(gen)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    new = rng.standard_normal(8).astype(np.float32)  # a task embedding the build never saw
    with pytest.raises(ConditionError, match="allow_unlisted=True") as e:
        b.run({"x": x}, embedding=new.tolist())
    assert "\n" not in str(e.value)
    with pytest.warns(UnverifiedConditionWarning, match="not listed at build time"):
        got = b.run({"x": x}, embedding=new.tolist(), allow_unlisted=True)["output"]
    np.testing.assert_allclose(got, _hnet_answer(hm, new, x), atol=1e-5, rtol=0)
    assert b.select(embedding=new.tolist(), allow_unlisted=True).unverified
    with warnings.catch_warnings():  # made once per condition: no second warning
        warnings.simplefilter("error")
        b.run({"x": x}, embedding=new.tolist(), allow_unlisted=True)
    # a listed condition stays listed (verified) with allow_unlisted
    assert not b.select(task=3, allow_unlisted=True).unverified
    # what cannot be formed is one line, never run
    for cond, msg in [
        ({"task": TASKS}, "give embedding="),
        ({"embedding": [1.0, 2.0]}, "has 2 number"),
        ({"embedding": "hello"}, "is not 8 number"),
        ({"embedding": new.tolist(), "lang": "en"}, "no key 'lang'"),
    ]:
        with pytest.raises(ConditionError, match=msg) as e:
            b.run({"x": x}, allow_unlisted=True, **cond)
        assert "\n" not in str(e.value)


def test_cli_inspect_shows_storage_and_run_marks_unverified(hnet300, tmp_path):
    from hypercompile.cli import main

    _, gen, _ = hnet300
    res = CliRunner().invoke(main, ["inspect", str(gen)])
    assert res.exit_code == 0, res.output
    assert "graph g0: weights generated" in res.output
    assert "generator gen0 (graph gen0)" in res.output and "embedding=..." in res.output
    np.save(tmp_path / "x.npy", np.ones((1, 16), np.float32))
    args = [
        "run",
        str(gen),
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--cond",
        "embedding=[0,1,2,3,4,5,6,7]",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "allow_unlisted" in res.output
    res = CliRunner().invoke(main, [*args, "--allow-unlisted", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["unverified"] is True
    res = CliRunner().invoke(main, [*args, "--allow-unlisted"])
    assert "unverified" in res.output


def test_runtime_stays_torch_free_with_generators(hnet300):
    _, gen, _ = hnet300
    code = (
        "import sys, warnings, numpy as np, hypercompile as hc\n"
        "warnings.simplefilter('ignore')\n"
        f"b = hc.load({str(gen)!r})\n"
        "x = np.ones((1, 16), np.float32)\n"
        "b.run({'x': x}, task=3)\n"
        "b.run({'x': x}, embedding=[0.5] * 8, allow_unlisted=True)\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'onnx', 'hypnettorch') or m.startswith(('hypercompile.builder', "
        "'hypercompile.frontend'))))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout


# -- hostile or damaged manifests --------------------------------------------------------------


def _edit(m: dict, how: str) -> None:
    g, v = m["generators"]["gen0"], m["variants"][0]
    if how == "unknown generator":
        v["generated"]["generator"] = "gen9"
    elif how == "output to unknown weight":
        g["outputs"]["output_0"] = "nope"
    elif how == "two outputs one weight":
        g["outputs"]["output_1"] = g["outputs"]["output_0"]
    elif how == "unknown output":
        g["outputs"]["output_9"] = "weights.0"
    elif how == "input not stored":
        v["generated"]["inputs"] = {}
    elif how == "unknown input tensor":
        v["generated"]["inputs"]["input_0"] = "0" * 32
    elif how == "input spec":
        g["inputs"][0]["shape"] = [9]
    elif how == "neither stored nor keyed":
        g["inputs"][0].update(stored=False, key=None)
    elif how == "generator graph is a variant's":
        g["graph"] = "g0"
    elif how == "unknown field":
        g["extra"] = 1
    elif how == "generated in schema 2":
        m["schema_version"] = 2
        del m["generators"]
    elif how == "weight_dtype":
        m["weight_dtype"] = "int4"


@pytest.mark.parametrize(
    "how, msg",
    [
        ("unknown generator", "names a generator that does not make"),
        ("output to unknown weight", "must give distinct weights"),
        ("two outputs one weight", "must give distinct weights"),
        ("unknown output", "names unknown output 'output_9'"),
        ("input not stored", "does not store its generator's inputs"),
        ("unknown input tensor", "names unknown tensor id"),
        ("input spec", "differs from its graph's spec"),
        ("neither stored nor keyed", "neither stored nor taken from a condition key"),
        ("generator graph is a variant's", "is also used elsewhere"),
        ("unknown field", "unknown field 'extra'"),
        ("generated in schema 2", "unknown field 'generated'"),
        ("weight_dtype", "weight_dtype must be"),
    ],
)
def test_hostile_generator_manifests_are_refused(hnet300, tmp_path, how, msg):
    _, gen, _ = hnet300
    m = manifest(gen)
    _edit(m, how)
    dst = tmp_path / "b"
    shutil.copytree(gen, dst)
    write_manifest(dst, m)
    with pytest.raises(BundleError, match=msg) as e:
        hc.load(dst)
    assert "\n" not in str(e.value)


def test_generator_output_bound_to_the_wrong_weight_is_refused_at_bind(hnet300, tmp_path):
    _, gen, _ = hnet300
    m = manifest(gen)
    outs = m["generators"]["gen0"]["outputs"]
    names = list(outs)
    outs[names[0]], outs[names[1]] = outs[names[1]], outs[names[0]]  # a weight and a bias
    dst = tmp_path / "b"
    shutil.copytree(gen, dst)
    write_manifest(dst, m)
    b = hc.load(dst)
    with pytest.raises(BundleError, match="the graph takes") as e:
        b.run({"x": np.ones((1, 16), np.float32)}, task=0)
    assert "\n" not in str(e.value)


# -- the storage plan --------------------------------------------------------------------------


def test_auto_picks_the_smaller_unless_the_target_has_room(tmp_path):
    hm = continual_hnet(30)  # 30 tasks: G (17 weight sets' worth) is smaller than 30
    path = hc.build(hm, out=tmp_path / "auto", parity_inputs=0)
    st = manifest(path)["graphs"]["g0"]["storage"]
    assert st["mode"] == "generate" and st["chosen"] == "auto: smaller on disk"
    assert st["generated_bytes"] < st["materialized_bytes"]
    # few tasks: the hypernet outweighs their weights, and nothing is exported for it
    small = hc.build(continual_hnet(4), out=tmp_path / "small", parity_inputs=0)
    m = manifest(small)
    assert m["graphs"]["g0"]["storage"]["mode"] == "materialize"
    assert "gen0" not in m["graphs"] and m["schema_version"] == 2
    assert not (small / "graphs" / "gen0.onnx").exists()
    # a target with room for every materialized weight keeps the faster switch
    toml = tmp_path / "roomy.toml"
    toml.write_text(
        'name = "roomy"\narch = "x86_64"\nbackends = ["onnxruntime"]\nstorage_mb = 64\n'
    )
    roomy = hc.build(hm, target=toml, out=tmp_path / "roomy", parity_inputs=0)
    st = manifest(roomy)["graphs"]["g0"]["storage"]
    assert st["mode"] == "materialize" and "storage_mb" in st["chosen"]
    # a switch budget the generator cannot meet
    slow = hc.build(hm, out=tmp_path / "slow", parity_inputs=0, max_switch_ms=1e-6)
    st = manifest(slow)["graphs"]["g0"]["storage"]
    assert st["mode"] == "materialize" and "max_switch_ms" in st["chosen"]


def test_generate_without_a_generator_or_on_a_stateful_model_is_refused(tmp_path):
    from models import TinyHyper
    from state_models import RunningNorm

    with pytest.raises(hc.BuildError, match="needs a model with generator"):
        hc.build(TinyHyper(), out=tmp_path / "t", storage="generate")
    assert not (tmp_path / "t").exists()

    class StatefulGen:
        """A stateful target with a generator: its state cannot be generated."""

        def conditions(self):
            return [{}]

        def build(self, cond):
            torch.manual_seed(0)
            return RunningNorm()

        def generate(self, cond):
            return self.build(cond).state_dict()

        def example_inputs(self, cond):
            return (torch.randn(2, 4),)

        def generator(self):
            return torch.nn.Identity()

        def generator_inputs(self, cond):
            return (torch.zeros(1),)

    with pytest.raises(hc.BuildError, match="keeps state between calls"):
        hc.build(StatefulGen(), out=tmp_path / "s", storage="generate")
    assert not (tmp_path / "s").exists()
    with pytest.raises(hc.BuildError, match="storage must be one of"):
        hc.build(TinyHyper(), out=tmp_path / "t", storage="zip")


def test_a_generator_that_disagrees_with_generate_is_a_build_error(tmp_path):
    hm = continual_hnet(4)
    good = hm.generator

    class Off(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = good()

        def forward(self, e):
            return {k: w * 1.01 for k, w in self.g(e).items()}

    hm.generator = Off
    with pytest.raises(hc.BuildError, match="disagrees with generate"):
        hc.build(hm, out=tmp_path / "x", storage="generate")
    assert not (tmp_path / "x").exists()


def test_fp16_weights_halve_storage_and_record_parity(tmp_path):
    hm = continual_hnet(30)
    half = hc.build(hm, out=tmp_path / "h", storage="generate", weights="fp16", parity_inputs=0)
    full = hc.build(hm, out=tmp_path / "f", storage="generate", parity_inputs=0)
    m, mf = manifest(half), manifest(full)
    assert m["weight_dtype"] == "float16" and m["rtol"] == 1e-2  # the fp16 default
    assert m["weight_bytes"] < 0.55 * mf["weight_bytes"]
    worst = max(v["parity"]["onnxruntime"]["max_rel"] for v in m["variants"])
    assert 1e-6 < worst < 1e-2  # honest: float16 weights cost precision
    b = hc.load(half)
    x = np.ones((1, 16), np.float32)
    want = hm.reference({"task": 2}, torch.from_numpy(x)).numpy()
    got = b.run({"x": x}, task=2)["output"]
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
    # materialized fp16 too (stub float32, stored float16, bound float32)
    mat = hc.build(continual_hnet(3), out=tmp_path / "m", storage="materialize", weights="fp16")
    tensors = hc.load(mat).manifest.tensors
    assert hc.load(mat).manifest.weight_dtype == "float16" and tensors
    np.testing.assert_allclose(
        hc.load(mat).run({"x": x}, task=1)["output"],
        continual_hnet(3).reference({"task": 1}, torch.from_numpy(x)).numpy(),
        rtol=0,
        atol=1e-2,
    )


# -- hyperlight: a hyperparameter between grid points ------------------------------------------


def test_hyperlight_generator_runs_between_grid_points(tmp_path):
    from test_adapters_libs import hyperlight_model

    hm = hyperlight_model()
    path = hc.build(hm, out=tmp_path / "hl", storage="generate")
    m = manifest(path)
    (spec,) = m["generators"]["gen0"]["inputs"]
    assert spec["stored"] is False and spec["key"] == "h"  # h is the input: nothing stored
    b = hc.load(path)
    (name,) = [i["name"] for i in m["inputs"]]
    x = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(4))
    for cond in b.variants:
        np.testing.assert_allclose(
            b.run({name: x.numpy()}, **cond)["output"], hm.reference(cond, x).numpy(), atol=1e-5
        )
    with pytest.raises(ConditionError, match="allow_unlisted"):
        b.run({name: x.numpy()}, h=0.25)
    with pytest.warns(UnverifiedConditionWarning):
        got = b.run({name: x.numpy()}, h=0.25, allow_unlisted=True)["output"]
    np.testing.assert_allclose(got, hm.reference({"h": 0.25}, x).numpy(), atol=1e-5)


def test_profile_measures_each_variants_switch(tmp_path):
    from hypercompile.devtools.profile import profile

    path = hc.build(continual_hnet(6), out=tmp_path / "p", storage="generate", parity_inputs=0)
    _, entry = profile(path, warmup=1, repeat=5)
    assert len(entry.variants) == 6
    for rec in entry.variants.values():
        switch = rec.results["onnxruntime"]["1"]["switch_ms"]
        assert 0 < switch < 1000
    from hypercompile.cli import main

    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0 and "switch ms" in res.output
