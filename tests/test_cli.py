import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ref


def hc_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.mark.parametrize("cmd", ["build", "run", "inspect", "targets", "profile"])
def test_every_command_has_help(cmd):
    res = hc_cli(cmd, "--help")
    assert res.returncode == 0 and "Usage:" in res.stdout


def test_build_run_inspect_round_trip(tmp_path):
    res = hc_cli(
        "build", ref("TinyHyper"), "--out", tmp_path / "b", "--where", "task=1,2", "--json"
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["variants"] == 2 and summary["graphs"] == 1 and summary["max_rel"] < 1e-4

    x = np.ones((2, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    res = hc_cli(
        "run",
        tmp_path / "b",
        "--input",
        f"input={tmp_path / 'x.npy'}",
        "--cond",
        "task=2",
        "--json",
        "--out",
        tmp_path / "y.npz",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)["outputs"]["output"]
    assert out["shape"] == [2, 4]
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["output"], out["data"], rtol=1e-6)

    res = hc_cli("inspect", tmp_path / "b")
    assert res.returncode == 0 and "task=1" in res.stdout and "task=2" in res.stdout
    assert "parity" in res.stdout
    info = json.loads(hc_cli("inspect", tmp_path / "b", "--json").stdout)
    assert [v["cond"] for v in info["variants"]] == [{"task": 1}, {"task": 2}]


def test_targets_lists_the_default():
    res = hc_cli("targets", "--json")
    assert res.returncode == 0
    assert "x86-cpu" in [t["name"] for t in json.loads(res.stdout)]
    assert "x86-cpu" in hc_cli("targets").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "nowhere.py:X"], "model file nowhere.py does not exist"),
        (["build", ref("TinyHyper"), "--target", "mars"], "unknown target 'mars'"),
        (["inspect", "/nonexistent/bundle"], "is not a bundle directory"),
        (["run", "/nonexistent/bundle"], "is not a bundle directory"),
        (["build", ref("TinyHyper"), "--where", "task"], "must look like KEY=VALUE"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message):
    res = hc_cli(*args)
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_run_errors(tiny_bundle, tmp_path):
    np.save(tmp_path / "bad.npy", np.ones((1, 3), np.float32))
    res = hc_cli("run", tiny_bundle, "--input", f"input={tmp_path / 'bad.npy'}", "--cond", "task=0")
    assert res.returncode == 1 and "expected shape [batch, 8], got [1, 3]" in res.stderr
    np.save(tmp_path / "ok.npy", np.ones((1, 8), np.float32))
    res = hc_cli("run", tiny_bundle, "--input", f"input={tmp_path / 'ok.npy'}", "--cond", "task=12")
    assert res.returncode == 1 and "no variant matches {task=12}" in res.stderr
    assert "Traceback" not in res.stderr
