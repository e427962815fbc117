"""The Python API beside the CLI: `hc.profile` and `hc.inspect` return what the CLI prints as
data; budgets choose only the keys a model declares selectable; the default back end stays
unless another is faster beyond the measured noise; rebuilds keep the profiles of variants
that did not change."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import manifest
from models import TinyHyper, Widths

import hypercompile as hc
from hypercompile.devtools.measure import best_backend
from hypercompile.devtools.profile import fingerprint_key, local_fingerprint


def hc_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def widths(tmp_path_factory):
    return hc.build(Widths(), out=tmp_path_factory.mktemp("w") / "widths")


def test_profile_then_budget_works_right_after_build(widths, tmp_path):
    path = tmp_path / "w"
    shutil.copytree(widths, path)
    b = hc.load(path)
    x = np.ones((1, 6), np.float32)
    with pytest.raises(hc.ProfileError, match="no profile for this device"):
        b.run({"input": x}, budget_ms=1e6)
    got = hc.profile(path, warmup=2, repeat=20)
    key = fingerprint_key(local_fingerprint())
    assert got["device"] == key and got["plot"] is None
    assert got["profile"] == manifest(path)["profile"][key]
    assert set(got["profile"]["variants"]) == {v["id"] for v in manifest(path)["variants"]}
    out = hc.load(path).run({"input": x}, budget_ms=1e6)  # the README's snippet, in order
    assert next(iter(out.values())).shape == (1, 3)
    assert hc.load(path).select(budget_ms=1e6).cond == {"width": 16}  # most parameters


def test_inspect_returns_what_the_cli_prints(widths):
    data = hc.inspect(widths)
    res = hc_cli("inspect", widths, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads(json.dumps(data))
    assert data["selectable"] == ["width"]
    assert [v["cond"] for v in data["variants"]] == [{"width": w} for w in (4, 8, 16)]


def test_profile_json_on_the_cli_is_hc_profile(widths, tmp_path):
    path = tmp_path / "w"
    shutil.copytree(widths, path)
    res = hc_cli("profile", path, "--warmup", 1, "--repeat", 10, "--json")
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert set(printed) == {"bundle", "device", "description", "profile", "plot"}
    assert printed["profile"] == manifest(path)["profile"][printed["device"]]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """TinyHyper (tasks, nothing selectable), profiled."""
    path = hc.build(TinyHyper(num_tasks=3), out=tmp_path_factory.mktemp("t") / "tasks")
    hc.profile(path, warmup=1, repeat=10)
    return path


def test_a_budget_never_chooses_a_task(tasks, tmp_path):
    b = hc.load(tasks)
    x = np.ones((1, 8), np.float32)
    assert "selectable" not in manifest(tasks)
    with pytest.raises(hc.ConditionError, match=r"give task \(one of 0, 1, 2\)"):
        b.run({"input": x}, budget_ms=1e6)
    assert b.select(budget_ms=1e6, task=2).cond == {"task": 2}
    np.save(tmp_path / "x.npy", x)
    feed = f"input={tmp_path / 'x.npy'}"
    res = hc_cli("run", tasks, "--input", feed, "--budget-ms", 1e6)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "give task" in res.stderr, res.stderr
    res = hc_cli("run", tasks, "--input", feed, "--budget-ms", 1e6, "--cond", "task=1")
    assert res.returncode == 0 and "selected task=1" in res.stdout, res.stderr


class Unknown(Widths):
    def selectable(self):
        return ["depth"]


def test_selectable_must_name_condition_keys(tmp_path):
    with pytest.raises(hc.BuildError, match="selectable\\(\\) names depth"):
        hc.build(Unknown(), out=tmp_path / "u")


def _rec(p90, drift):
    return {"1": {"p90_ms": p90, "drift_ms": drift, "spread_ms": 10 * drift}}


def test_auto_keeps_the_default_back_end_within_the_noise():
    within = {"onnxruntime": _rec(1.00, 0.05), "tvm": _rec(0.97, 0.02)}
    assert best_backend(within, ["onnxruntime", "tvm"]) == "onnxruntime"
    beyond = {"onnxruntime": _rec(1.00, 0.05), "tvm": _rec(0.90, 0.02)}
    assert best_backend(beyond, ["onnxruntime", "tvm"]) == "tvm"
    assert best_backend(within, ["tvm", "onnxruntime"]) == "tvm"  # the default is the target's
    assert best_backend(within) == "tvm"  # no order: the fastest
    old = {"onnxruntime": {"1": {"p90_ms": 1.0, "spread_ms": 0.2}}, "tvm": {"1": {"p90_ms": 0.9}}}
    assert best_backend(old, ["onnxruntime"]) == "onnxruntime"  # no drift: the spread


class Reseeded(Widths):
    """Widths whose width-8 weights differ."""

    def generate(self, cond):
        w = super().generate(cond)
        return {k: v + 1 for k, v in w.items()} if cond["width"] == 8 else w


def test_a_rebuild_keeps_profiles_of_unchanged_variants(widths, tmp_path):
    path = tmp_path / "w"
    shutil.copytree(widths, path)
    hc.profile(path, warmup=1, repeat=10)
    key = fingerprint_key(local_fingerprint())
    before = manifest(path)["profile"][key]["variants"]
    hc.build(Widths(), out=path)  # the same model: every timing stays
    after = manifest(path)["profile"][key]["variants"]
    assert after == before
    hc.build(Reseeded(), out=path)  # width 8's weights changed: its timing goes
    m = manifest(path)
    kept = m["profile"][key]["variants"]
    assert sorted(r["cond"]["width"] for r in kept.values()) == [4, 16]
    ids = {v["id"]: v["cond"] for v in m["variants"]}
    assert all(ids[vid] == r["cond"] for vid, r in kept.items())
    hc.load(path, verify=True)  # every hash still checks
    assert hc.load(path).select(budget_ms=1e6).cond == {"width": 16}
