"""The HyperModel protocol at its edges and the command line that feeds it: structured (JSON)
conditions with a canonical key, a hypernet that needs autograd, and plain modules given their
example inputs on the command line (`build --input NAME=1x3x8x8[:DTYPE]`)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from proto_models import STRUCTURED, GradHyper, Structured, TwoNamed

import hypercompile as hc
from hypercompile.builder.build import select_conditions
from hypercompile.cli import main
from hypercompile.core.conditions import cond_key, cond_problem, parse_value, show, value_key
from hypercompile.core.manifest import Manifest
from hypercompile.frontend.loader import resolve_model

MODELS = Path(__file__).resolve().parent / "proto_models.py"


def hc_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", *map(str, args)], capture_output=True, text=True
    )


def _one_line_error(res, message):
    assert res.exit_code == 1, res.output
    assert message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


# -- canonical keys and parsing (fast) ---------------------------------------------------------
def test_the_canonical_key_ignores_dict_order_but_not_list_order():
    a = {"ks": [3, 5, 7], "e": {"w": 4, "act": "relu"}}
    assert cond_key(a) == cond_key({"e": {"act": "relu", "w": 4}, "ks": (3, 5, 7)})
    assert cond_key(a) != cond_key({"ks": [7, 5, 3], "e": {"w": 4, "act": "relu"}})
    assert value_key(2.0) == value_key(2) and value_key(True) != value_key(1)
    assert value_key("1") != value_key(1)
    assert value_key(np.int64(3)) == value_key(3)


@pytest.mark.parametrize(
    "cond, message",
    [
        ({"a": math.nan}, "condition.a is nan"),
        ({"a": [1, math.inf]}, "condition.a[1] is inf"),
        ({"a": {1: 2}}, "condition.a has key 1, not a string"),
        ({"a": {1, 2}}, "condition.a is a set"),
        ({"a": json.loads("[" * 17 + "]" * 17)}, "nested more than 16 levels"),
        ([1], "condition is a list, not a dict"),
    ],
)
def test_conditions_that_are_not_json_are_named(cond, message):
    assert message in cond_problem(cond)


def test_flat_structured_and_null_conditions_are_json():
    for cond in STRUCTURED + [{"task": 3}, {"x": None, "y": 0.5, "z": True}, {}]:
        assert cond_problem(cond) is None


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ('"1"', "1"),
        ("en", "en"),
        ("NaN", "NaN"),
        ("[3,5,7]", [3, 5, 7]),
        ('{"w": 4, "act": "relu"}', {"w": 4, "act": "relu"}),
    ],
)
def test_command_line_values_are_json_first_then_strings(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)
    assert parse_value(show(value)) == value  # show writes what --cond reads back


def test_show_quotes_only_strings_that_would_read_as_something_else():
    assert [show(v) for v in ("en", "1", "true", [3, 5], {"w": 4})] == [
        "en",
        '"1"',
        '"true"',
        "[3,5]",
        '{"w":4}',
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "b", "--cond", "ks=[3,5"], "--cond ks: '[3,5' is not valid JSON"),
        (["run", "b", "--cond", "e={w:4}"], "--cond e: '{w:4}' is not valid JSON"),
        (["run", "b", "--cond", "a=1", "--cond", "a=2"], "--cond a is given twice"),
        (["build", "m.py:X", "--where", "ks=[3,5],[7"], "--where ks='[3,5],[7' is not valid JSON"),
        (["build", "m.py:X", "--input", "x=1x3xx8"], "the shape must be sizes >= 1 joined by x"),
        (["build", "m.py:X", "--input", "x=1x0"], "the shape must be sizes >= 1 joined by x"),
        (["build", "m.py:X", "--input", "x=1x3:float8"], "unknown dtype 'float8' (one of float32"),
        (["build", "m.py:X", "--input", "x=1", "--input", "x=2"], "--input x is given twice"),
        (["build", "m.py:X", "--input", "1x=2"], "NAME must be a parameter name"),
        (["build", "m.py:X", "--input", "x"], "--input 'x' must look like KEY=VALUE"),
    ],
)
def test_bad_conditions_and_inputs_are_one_line_while_parsing(args, message):
    _one_line_error(CliRunner().invoke(main, args), message)


def test_a_malformed_input_fails_fast_without_importing_torch():
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
        "runpy.run_module('hypercompile.cli', run_name='__main__', alter_sys=True)\n"
    )
    args = ["build", f"{MODELS}:TwoNamed", "--input", "x=1x3:complex"]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().startswith("error: --input x: unknown dtype 'complex'")
    assert res.stdout.strip() == "torch imported: False"


def test_where_values_are_json_and_commas_inside_lists_do_not_split():
    where = next(p for p in main.commands["build"].params if p.name == "where")
    values = ("ks=[3,5,7],[7,5,3]", 'lang=1,"1",en', "task=1,2")
    got = where.callback(None, where, values)
    assert got == {"ks": [[3, 5, 7], [7, 5, 3]], "lang": [1, "1", "en"], "task": [1, 2]}


def test_select_conditions_matches_json_values_and_refuses_duplicates():
    conds = Structured().conditions()
    assert select_conditions(conds, {"ks": [[3, 5, 7]]}) == conds[:2]
    assert select_conditions(conds, {"lang": ["1"]}) == [conds[1]]
    assert select_conditions(conds, {"e": [{"act": "relu", "w": 8}]}) == [conds[2]]
    with pytest.raises(
        hc.BuildError, match=r'--where lang: no condition has lang=2 \(lang takes "1", 1\)'
    ):
        select_conditions(conds, {"lang": [2]})
    twin = {"e": {"act": "relu", "w": 4}, "lang": 1, "ks": [3, 5, 7]}
    with pytest.raises(hc.BuildError, match="are the same"):
        select_conditions(conds + [twin], None)
    with pytest.raises(hc.BuildError, match=r"condition\.x is nan"):
        select_conditions([{"x": math.nan}], None)
    with pytest.raises(hc.BuildError, match="condition.x has key 3, not a string"):
        select_conditions([{"x": {3: 1}}], None)


def test_example_inputs_may_be_a_tensor_a_tuple_or_named():
    net = TwoNamed()
    x, ids = torch.randn(1, 3, 8, 8), torch.zeros(1, 4, dtype=torch.int64)
    assert resolve_model(net, {"ids": ids, "x": x}).example_inputs({}) == (x, ids)
    assert resolve_model(net, [x, ids]).example_inputs({}) == (x, ids)
    one = torch.nn.Linear(3, 2)
    assert resolve_model(one, torch.ones(1, 3)).example_inputs({})[0].shape == (1, 3)
    with pytest.raises(hc.BuildError, match=r"forward\(x, ids\) has no input 'y'"):
        resolve_model(net, {"x": x, "y": ids})
    with pytest.raises(hc.BuildError, match=r"no input named 'ids' for TwoNamed.forward\(x, ids\)"):
        resolve_model(net, {"x": x})
    with pytest.raises(hc.BuildError, match="no input named 'x'"):
        resolve_model(net, {"ids": ids})
    with pytest.raises(hc.BuildError, match="must be tensors, not int"):
        resolve_model(net, (x, 3))
    with pytest.raises(hc.ModelRefError, match="is a HyperModel"):
        resolve_model(GradHyper(), (x,))


# -- real bundles --------------------------------------------------------------------------
def _expected(cond, x):
    target = Structured().build(cond)
    target.load_state_dict(Structured().generate(cond))
    with torch.no_grad():
        return target(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    """The three structured variants, built through the command line."""
    out = tmp_path_factory.mktemp("s") / "structured"
    res = hc_cli("build", f"{MODELS}:Structured", "--out", out, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["variants"] == 3
    return out


def test_structured_conditions_select_by_canonical_key_and_by_subset(structured):
    b = hc.load(structured)
    assert b.variants == STRUCTURED
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    for cond in STRUCTURED:
        np.testing.assert_allclose(b.run({"input": x}, **cond)["output"], _expected(cond, x), 1e-5)
    # dict order does not matter, list order does, tuples are lists, "1" is not 1
    reordered = {"lang": "1", "e": {"act": "relu", "w": 4}, "ks": (3, 5, 7)}
    assert b.select(**reordered).cond == STRUCTURED[1]
    assert b.select(ks=[7, 5, 3]).cond == STRUCTURED[2]
    assert b.select(e={"act": "relu", "w": 8}).cond == STRUCTURED[2]
    assert b.select(ks=[3, 5, 7], lang=1).cond == STRUCTURED[0]
    assert b.select(ks=[3, 5, 7], lang=1.0).cond == STRUCTURED[0]
    with pytest.raises(hc.ConditionError, match="2 variants match {ks=\\[3,5,7\\]}; also give"):
        b.select(ks=[3, 5, 7])
    with pytest.raises(hc.ConditionError, match=r"no variant matches \{ks=\[3,5\]\}"):
        b.select(ks=[3, 5])
    with pytest.raises(hc.ConditionError, match=r"available: \{ks=\[3,5,7\], e=\{"):
        b.select(lang=True)
    with pytest.raises(hc.ConditionError, match="is not JSON"):
        b.select(ks={3, 5, 7})


def test_run_and_inspect_structured_conditions_on_the_command_line(structured, tmp_path):
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    feed = ["--input", f"input={tmp_path / 'x.npy'}", "--json"]
    runner = CliRunner()
    for quoted, cond in (("1", STRUCTURED[0]), ('"1"', STRUCTURED[1])):
        args = ["run", str(structured), *feed, "--cond", "ks=[3, 5, 7]"]
        res = runner.invoke(main, args + ["--cond", f"lang={quoted}"])
        assert res.exit_code == 0, res.output
        got = np.array(json.loads(res.output)["outputs"]["output"]["data"], np.float32)
        np.testing.assert_allclose(got, _expected(cond, x), rtol=1e-5)
    res = runner.invoke(main, ["run", str(structured), *feed, "--cond", 'e={"w":8,"act":"relu"}'])
    got = np.array(json.loads(res.output)["outputs"]["output"]["data"], np.float32)
    np.testing.assert_allclose(got, _expected(STRUCTURED[2], x), rtol=1e-5)
    res = runner.invoke(main, ["run", str(structured), *feed, "--cond", "ks=[3,5,7]"])
    _one_line_error(res, "2 variants match {ks=[3,5,7]}; also give e, lang")
    res = runner.invoke(main, ["inspect", str(structured)])
    assert res.exit_code == 0 and 'lang="1"' in res.output and "ks=[7,5,3]" in res.output


def test_the_manifest_refuses_conditions_equal_as_json_and_values_json_cannot_hold(structured):
    raw = json.loads((structured / "manifest.json").read_text())
    assert Manifest.from_json(raw).variants[2].cond == STRUCTURED[2]  # loads as written

    def edited(cond):
        data = json.loads(json.dumps(raw))
        data["variants"][1]["cond"] = cond
        return data

    twin = {"e": {"act": "relu", "w": 4}, "lang": 1, "ks": [3, 5, 7]}
    with pytest.raises(hc.BundleError, match="v0000 and v0001 have one condition"):
        Manifest.from_json(edited(twin))
    with pytest.raises(hc.BundleError, match=r"variants\[1\]\.cond\.e\.w is nan"):
        Manifest.from_json(edited({"e": {"w": math.nan}}))
    deep: list = [1]
    for _ in range(20):
        deep = [deep]
    with pytest.raises(hc.BundleError, match="nested more than 16 levels deep"):
        Manifest.from_json(edited({"ks": deep}))
    with pytest.raises(hc.BundleError, match=r"variants\[1\]\.cond has the wrong type"):
        Manifest.from_json(edited([1]))


def test_generate_and_reference_run_with_autograd(tmp_path):
    path = hc.build(GradHyper(), out=tmp_path / "g")
    b = hc.load(path)
    x = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32)
    for task in range(3):
        want = GradHyper().reference({"task": task}, torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(b.run({"input": x}, task=task)["output"], want, rtol=1e-5)
    assert all(v.parity["onnxruntime"].against == "reference" for v in b.manifest.variants)


def test_a_plain_module_takes_its_example_inputs_from_the_command_line(tmp_path):
    out = tmp_path / "plain"
    args = ["build", f"{MODELS}:TwoNamed", "--out", str(out), "--json"]
    runner = CliRunner()
    res = runner.invoke(main, args)
    _one_line_error(res, "a plain nn.Module needs example inputs")
    assert "build --input NAME=1x3x32x32" in res.output
    res = runner.invoke(main, args + ["--input", "x=1x3x8x8", "--input", "y=1x4:int64"])
    _one_line_error(res, "TwoNamed.forward(x, ids) has no input 'y'")
    res = runner.invoke(main, args + ["--input", "x=1x3x8x8"])
    _one_line_error(res, "no input named 'ids' for TwoNamed.forward(x, ids)")
    res = runner.invoke(main, args + ["--input", "x=1x2x8x8", "--input", "ids=1x4:int64"])
    _one_line_error(res, "forward fails on the given example inputs (1x2x8x8 float32, 1x4 int64)")
    res = runner.invoke(main, args + ["--input", "ids=1x4:int64", "--input", "x=1x3x8x8"])
    assert res.exit_code == 0, res.output
    b = hc.load(out)
    assert [(s["name"], s["dtype"], s["shape"][1:]) for s in b.inputs] == [
        ("x", "float32", [3, 8, 8]),
        ("ids", "int64", [4]),
    ]
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ids = np.array([[0, 1, 1, 0]], np.int64)
    with torch.no_grad():
        want = TwoNamed()(torch.from_numpy(x), torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(b.run({"x": x, "ids": ids})["output"], want, rtol=1e-5, atol=1e-6)


def test_a_bare_tensor_is_example_inputs_enough(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()).eval()
    b = hc.load(hc.build(net, out=tmp_path / "bare", example_inputs=torch.randn(1, 5)))
    x = np.ones((1, 5), np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(b.run({b.inputs[0]["name"]: x})["output"], want, rtol=1e-5)
