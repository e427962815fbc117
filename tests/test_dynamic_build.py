"""Dynamic models end to end: split, export every block, verify through the runtime, and
agree with eager PyTorch on fresh random inputs."""

import ast
import importlib.util
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import ROOT
from dyn_models import (
    CondExpr,
    CrashingExport,
    DataGate,
    DelInput,
    EarlyExit,
    Halving,
    NeutralContexts,
    RecurrentSkip,
    Refine,
    RefusingExport,
    Router,
    ShapeAsserts,
    ShapeShift,
    SharedLayer,
    Stack,
    TwoInputs,
)

import hypercompile as hc
from hypercompile import HypercompileError
from hypercompile.core.tensors import read_tensors


def _agree(model, bundle, n=100, seed=1, backend=None):
    gen = torch.Generator().manual_seed(seed)
    names = [i["name"] for i in bundle.inputs]
    mismatched = 0
    with torch.no_grad():
        for _ in range(n):
            xs = [torch.randn(x.shape, generator=gen) for x in model.example_inputs()]
            want = model(*xs)
            want = list(want) if isinstance(want, tuple) else [want]
            feeds = {k: x.numpy() for k, x in zip(names, xs)}
            got = list(bundle.run(feeds, backend=backend).values())
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
            if want[0].dim() and want[0].dtype.is_floating_point:
                mismatched += int(np.argmax(got[0]) != int(want[0].argmax()))
    assert mismatched == 0


@pytest.mark.parametrize("model_cls", [EarlyExit, Refine, Router, Stack, TwoInputs, RecurrentSkip])
def test_small_dynamic_models_build_and_agree(model_cls, dyn_bundle):
    model = model_cls()
    path = dyn_bundle(model_cls.__name__)  # built with 60 random parity inputs
    m = json.loads((path / "manifest.json").read_text())
    (variant,) = m["variants"]
    assert "program" in variant and variant["parity"]["onnxruntime"]["argmax_mismatches"] == 0
    program = m["programs"][variant["program"]]
    for name, c in program["coverage"].items():
        assert all(n > 0 for n in c["taken"].values()), (name, c)
    _agree(model, hc.load(path))


def test_identical_subgraphs_are_stored_once_and_weights_bind_per_file(dyn_bundle):
    model = SharedLayer()  # one gated layer applied three times: identical blocks
    path = dyn_bundle("SharedLayer")
    m = json.loads((path / "manifest.json").read_text())
    program = m["programs"]["p0"]
    used = [b["graph"] for b in program["blocks"] if b["graph"]]
    assert set(used) == set(m["graphs"])  # every stored graph is called
    for c in program["coverage"].values():  # both sides of every gate were checked
        assert all(n > 0 for n in c["taken"].values()), c
    # every application of the layer calls the same graphs, so the bundle stores fewer graphs
    # than there are blocks calling graphs
    assert len(m["graphs"]) < len(used)
    calls = Counter(used)
    shared = [g for g in calls if any(w.startswith("layer.") for w in m["graphs"][g]["weights"])]
    assert shared and all(calls[g] == 3 for g in shared), calls
    digests = [g["digest"] for g in m["graphs"].values()]
    assert len(digests) == len(set(digests))
    assert len(list((path / "graphs").iterdir())) == len(m["graphs"])
    # the shared graphs name the layer's weights, bound from the variant's tensors
    weights = {w for g in m["graphs"].values() for w in g["weights"]}
    assert weights == set(model.state_dict())
    (variant,) = m["variants"]
    assert set(variant["weights"]) == weights
    stored = read_tensors((path / "weights/v0000.safetensors").read_bytes())
    assert set(stored) == set(variant["weights"].values())
    _agree(model, hc.load(path))


def test_loop_bound_from_the_manifest(tmp_path):
    path = hc.build(Halving(), out=tmp_path / "b", parity_inputs=20)
    b = hc.load(path)
    x = np.full((1, 4), 1e6, np.float32)  # about 20 halvings
    np.testing.assert_allclose(b.run({"x": x})["output"], Halving()(torch.from_numpy(x)).numpy())
    m = json.loads((path / "manifest.json").read_text())
    m["programs"]["p0"]["max_iterations"] = 5
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(HypercompileError, match="exceeded its bound of 5 loop iterations"):
        hc.load(path).run({"x": x})


def test_program_runs_without_torch(dyn_bundle):
    path = dyn_bundle("Router")
    code = (
        "import sys, numpy as np, hypercompile as hc\n"
        f"b = hc.load({str(path)!r})\n"
        "for s in range(10):\n"
        "    b.run({'x': np.random.default_rng(s).standard_normal((1, 5)).astype(np.float32)})\n"
        "print('IMPORTED', [m for m in ('torch', 'onnx') if m in sys.modules])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "IMPORTED []" in res.stdout


def test_inspect_shows_program_tree_and_coverage(dyn_bundle):
    path = dyn_bundle("EarlyExit")
    res = subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", "inspect", str(path)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "program p0" in res.stdout and "return" in res.stdout
    assert "F.softmax(logits, dim=1).max() > self.thresholds[i]" in res.stdout
    assert "branch coverage" in res.stdout


class TaskEarlyExit:
    """A HyperModel whose target is a DyNN: per task, generated weights and threshold."""

    def __init__(self, tasks=3):
        gen = torch.Generator().manual_seed(0)
        self.emb = torch.randn(tasks, 3, generator=gen)
        self.h = torch.nn.Linear(3, sum(p.numel() for p in EarlyExit().state_dict().values()))

    def conditions(self):
        return [{"task": t} for t in range(len(self.emb))]

    def build(self, cond):
        m = EarlyExit()
        m.thresholds = [0.34, 0.37, 0.29 + 0.002 * cond["task"]]
        return m

    def generate(self, cond):
        flat, out, i = self.h(self.emb[cond["task"]]), {}, 0
        for k, v in EarlyExit().state_dict().items():
            out[k] = flat[i : i + v.numel()].reshape(v.shape)
            i += v.numel()
        return out

    def example_inputs(self, cond):
        return (torch.randn(1, 8),)


def test_hypermodel_with_dynamic_target_builds_per_condition_programs(tmp_path):
    hm = TaskEarlyExit()
    with pytest.raises(hc.BuildError, match=r"dyn_models\.py:\d+: the (then|else) side of"):
        hc.build(hm, out=tmp_path / "refused", parity_inputs=40)  # some tasks' exits never fire
    path = hc.build(hm, out=tmp_path / "b", parity_inputs=40, allow_untested=True)
    m = json.loads((path / "manifest.json").read_text())
    assert any("was never taken" in u for v in m["variants"] for u in v.get("untested", []))
    assert len(m["programs"]) == 3
    # the first two exits' blocks have the same code in every task: exported once
    per_program = [
        len({b["graph"] for b in p["blocks"] if b["graph"]}) for p in m["programs"].values()
    ]
    assert len(m["graphs"]) < sum(per_program)
    b = hc.load(path)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    for cond in b.variants:
        from hypercompile.frontend.materialize import materialize

        target = materialize(hm, cond)
        want = target(torch.from_numpy(x))
        got = b.run({"x": x}, **cond)
        np.testing.assert_allclose(got["output_0"], want[0].detach().numpy(), atol=1e-5)


ZOO = [
    "ShallowDeep",
    "SkipNetFF",
    "SkipNetRNN",
    "BlockDrop",
    "IterativeRefine",
    "TopOneMoE",
    "NestedIfLoopIf",
]


def _zoo_model(name):
    sys.path.insert(0, str(ROOT / "examples" / "dynamic"))
    import zoo

    return getattr(zoo, name)()


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    """`zoo_bundle(name)` -> (model, bundle path): a model of examples/dynamic/zoo.py and its
    bundle, built once for both zoo tests (constructing SkipNetRNN calibrates its gates, and
    exporting the blocks is most of a build): on ONNX Runtime and, where apache-tvm is
    installed, TVM, both checked on the default 200 random parity inputs. Read-only."""
    built = {}

    def get(name):
        if name not in built:
            model = _zoo_model(name)
            backends = ["onnxruntime"] + (["tvm"] if importlib.util.find_spec("tvm") else [])
            out = tmp_path_factory.mktemp("zoo") / name
            built[name] = model, hc.build(model, out=out, backends=backends)
        return built[name]

    return get


def _parity_inputs(m: dict, variant: dict) -> int:
    """The example, 200 random inputs, and 50 at batch 3 where the program runs at any batch."""
    return 201 + (0 if "fixed_batch" in m["programs"][variant["program"]] else 50)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_builds_every_branch_taken_and_agrees(name, zoo_bundle):
    model, path = zoo_bundle(name)
    m = json.loads((path / "manifest.json").read_text())
    (variant,) = m["variants"]
    assert variant["parity"]["onnxruntime"]["inputs"] == _parity_inputs(m, variant)
    assert variant["parity"]["onnxruntime"]["argmax_mismatches"] == 0
    for c in m["programs"][variant["program"]]["coverage"].values():
        assert all(n > 0 for n in c["taken"].values()), c
    _agree(model, hc.load(path), n=100, seed=7, backend="onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_on_tvm_agrees_with_pytorch(name, zoo_bundle):
    pytest.importorskip("tvm", reason="apache-tvm is an optional back end")
    model, path = zoo_bundle(name)
    m = json.loads((path / "manifest.json").read_text())
    (variant,) = m["variants"]
    assert variant["parity"]["tvm"]["inputs"] == _parity_inputs(m, variant)
    assert variant["parity"]["tvm"]["max_rel"] <= 1e-4
    assert variant["parity"]["tvm"]["argmax_mismatches"] == 0
    _agree(model, hc.load(path), n=20, seed=11, backend="tvm")


@pytest.mark.parametrize("model_cls", [DelInput, ShapeAsserts, CondExpr, NeutralContexts])
def test_ordinary_idioms_build_and_agree(model_cls, dyn_bundle):
    """`del name`, asserts on shapes and dtypes, conditional expressions with data-dependent
    tests and value-neutral `with` blocks, in forwards the splitter lowers."""
    model = model_cls()
    path = dyn_bundle(model_cls.__name__)
    m = json.loads((path / "manifest.json").read_text())
    (variant,) = m["variants"]
    assert "program" in variant
    _agree(model, hc.load(path))


def test_data_attribute_builds_and_agrees(tmp_path):
    """`.data` (DyCL's BlockDrop: `if action.data.sum() == 0:`) runs as `.detach()` in blocks;
    the exporter crashed on it."""
    model = DataGate()
    path = hc.build(model, out=tmp_path / "b", parity_inputs=40)
    _agree(model, hc.load(path), n=40)


def test_exporter_crash_fails_the_build_at_the_block_and_cleans_up(tmp_path):
    """A segfault inside the exporter kills a worker, not the build: the error names the
    block's line, and no temporary folder is left."""
    with pytest.raises(hc.BuildError) as err:
        hc.build(CrashingExport(), out=tmp_path / "b", parity_inputs=20)
    line = next(
        i
        for i, t in enumerate((ROOT / "tests" / "dyn_models.py").read_text().splitlines(), 1)
        if "x = self.crash(x)" in t
    )
    assert f"dyn_models.py:{line}: exporting this block crashed the exporter" in str(err.value)
    assert "SIGSEGV" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_export_errors_name_the_innermost_user_line(tmp_path):
    """Blocks export together; when that fails each is exported alone, and the error names the
    line inside the layer that raised, not the block's first line."""
    lines = (ROOT / "tests" / "dyn_models.py").read_text().splitlines()
    line = next(i for i, t in enumerate(lines, 1) if 'refuses to export")' in t)
    with pytest.raises(hc.BuildError, match=rf"dyn_models\.py:{line}: .*this layer refuses"):
        hc.build(RefusingExport(), out=tmp_path / "b", parity_inputs=20)
    assert list(tmp_path.iterdir()) == []


def test_refusals_name_forward_values_and_lines(tmp_path):
    with pytest.raises(
        hc.BuildError,
        match=r"dyn_models\.py:\d+: `y` is a tensor on one path "
        r"and a tuple of 2 on another",
    ) as err:
        hc.build(ShapeShift(), out=tmp_path / "b", parity_inputs=20)
    assert "__" not in str(err.value)


def test_internal_value_names_are_shown_as_forward_writes_them():
    from hypercompile.frontend.program import user_name

    assert user_name("x__27") == "`x`"
    assert user_name("h__3__12") == "`h`"
    assert user_name("__ret10") == "the value returned"
    assert user_name("__p4__2") == "a condition"
    assert user_name("__st_0_hidden") == "attribute `hidden`"


@pytest.mark.parametrize("name", ["BlockDrop", "BlockDropData"])
def test_skipping_a_residual_block_costs_no_graph_call(name):
    """BlockDrop decides every skip from the policy computed in the first block: the decisions
    (and, in DyCL's form, the `action = policy[:, t]` they read) move into that block or into
    the blocks that use them, so on the path that skips every residual block each graph called
    runs a layer; none is called only to index the policy."""
    from hypercompile.core import ir
    from hypercompile.frontend.program import split_module

    prog = split_module(_zoo_model(name).eval())
    k, called = prog.entry, []
    while not isinstance(prog.blocks[k].term, ir.Return):
        b = prog.blocks[k]
        if b.body:
            called.append(b)
        k = b.term.then if isinstance(b.term, ir.Branch) else b.term.target
    assert len(called) >= 2
    for b in called:
        code = "\n".join(ast.unparse(s) for s in b.body)
        assert "_hc_get(__root" in code and ")(" in code, code


class _Recording:
    """A block runner counting the values its resident calls made, recording the kinds of
    values they were fed, and counting (in `host`) the values the host copied back."""

    made = reads = 0
    host_of = None  # the wrapped runners' own host copy

    def __init__(self, inner):
        self.inner, self.fed = inner, []

    def run_resident(self, feeds):
        self.fed += [type(v).__name__ for v in feeds.values()]
        out = self.inner.run_resident(feeds)
        _Recording.made += len(out)
        return out

    @staticmethod
    def host(v):
        _Recording.reads += 1
        return _Recording.host_of(v)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
@pytest.mark.parametrize("name", ["BlockDrop", "TopOneMoE", "IterativeRefine"])
def test_block_outputs_stay_with_the_back_end_between_blocks(name, backend, zoo_bundle):
    """With `resident` (on by itself on a GPU), blocks pass each other the back end's own
    values (OrtValues through I/O binding, TVM tensors) and the host copies back only what it
    reads: decisions, joined lists and the outputs. Forced here on the CPU: the same answers
    as the numpy path, and fewer copies back than values made."""
    from hypercompile.runtime.program import ProgramRunner

    if backend == "tvm":
        pytest.importorskip("tvm", reason="apache-tvm is an optional back end")
    _, path = zoo_bundle(name)
    bundle = hc.load(path)
    (variant,) = bundle.manifest.variants
    plain = bundle.load_runner(variant, backend)
    assert not plain.resident  # a CPU runner keeps numpy arrays by itself
    wrapped = {g: _Recording(r) for g, r in plain.runners.items()}
    _Recording.host_of = type(next(iter(plain.runners.values()))).host
    resident = ProgramRunner(plain.program, plain.graph_inputs, wrapped, resident=True)
    spec = bundle.inputs[0]
    shape = [d if isinstance(d, int) else 2 for d in spec["shape"]]
    gen = np.random.default_rng(3)
    _Recording.made = _Recording.reads = 0
    for _ in range(10):
        x = gen.standard_normal(shape).astype(np.float32)
        got, want = resident.run({spec["name"]: x}), plain.run({spec["name"]: x})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert isinstance(g, np.ndarray)
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    fed = [t for r in wrapped.values() for t in r.fed]
    assert ("OrtValue" if backend == "onnxruntime" else "Tensor") in fed, fed
    assert 0 < _Recording.reads < _Recording.made
