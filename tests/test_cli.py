import json
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ref

from hypercompile.cli import main


def hc_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.mark.parametrize("cmd", ["build", "run", "inspect", "targets", "profile", "prepare"])
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


TINY = ref("TinyHyper")


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", TINY, "--where", "task"], "--where 'task' must look like KEY=VALUE"),
        (["build", TINY, "--where", "=1"], "--where '=1' must look like KEY=VALUE"),
        (["build", TINY, "--where", "task=1,,2"], "--where task='1,,2' has an empty value"),
        (["build", TINY, "--rtol", "0"], "--rtol must be a number > 0, not 0"),
        (["build", TINY, "--rtol", "nan"], "--rtol must be a number > 0, not nan"),
        (["build", TINY, "--rtol", "tight"], "--rtol must be a number > 0, not 'tight'"),
        (["build", TINY, "--parity-inputs", "-1"], "--parity-inputs must be an integer >= 0"),
        (["build", TINY, "--parity-inputs", "2.5"], "--parity-inputs must be an integer >= 0"),
        (["build", TINY, "--tune-trials", "0"], "--tune-trials must be an integer >= 1, not 0"),
        (["build", TINY, "--backend", "tensorrtx"], "unknown back end 'tensorrtx'"),
        (["build", TINY, "--target", "mars"], "unknown target 'mars'"),
        (["build", "models.TinyHyper"], "must look like path/file.py:NAME or module:NAME"),
        (["build", f"{TINY.rsplit(':')[0]}:"], "names no object after ':'"),
        (["build", "nowhere.py:X"], "model file nowhere.py does not exist"),
        (["run", "b", "--input", "x.npy"], "--input 'x.npy' must look like KEY=VALUE"),
        (["run", "b", "--cond", "task"], "--cond 'task' must look like KEY=VALUE"),
        (["run", "b", "--budget-ms", "-5"], "--budget-ms must be a number > 0, not -5"),
        (["profile", "b", "--batch", "0"], "--batch must be an integer >= 1, not 0"),
        (["profile", "b", "--warmup", "-1"], "--warmup must be an integer >= 0, not -1"),
        (["profile", "b", "--repeat", "many"], "--repeat must be an integer >= 1, not 'many'"),
        (["profile", "b", "--timeout", "0"], "--timeout must be a number > 0, not 0"),
        (["profile", "b", "--rpc", "localhost"], "--rpc 'localhost' must look like HOST:PORT"),
        (["profile", "b", "--rpc", "127.0.0.1:9190"], "--rpc needs --key"),
    ],
)
def test_bad_arguments_are_refused_while_parsing_in_one_line(args, message):
    # nothing is built, loaded or profiled: the arguments are refused first
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_malformed_where_fails_fast_without_importing_torch():
    # `python -m hypercompile.cli`, reporting at exit whether torch was imported
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
        "runpy.run_module('hypercompile.cli', run_name='__main__', alter_sys=True)\n"
    )
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", code, "build", TINY, "--where", "task"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert res.returncode == 1
    assert res.stderr.strip() == "error: --where 'task' must look like KEY=VALUE"
    assert res.stdout.strip() == "torch imported: False"
    assert elapsed < 3, f"a malformed --where took {elapsed:.1f} s to refuse"
