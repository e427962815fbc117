"""The command line as a new user meets it: -h, JSON errors under --json, option values checked
before any work, a build without torch, default bundle names that do not collide, and a build
killed by SIGTERM that leaves nothing behind."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, ref

from hypercompile.cli import _default_name


def hc_cli(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


def test_dash_h_is_help_and_commands_are_described_whole():
    res = hc_cli("-h")
    assert res.returncode == 0 and "Usage:" in res.stdout
    assert "..." not in res.stdout.split("Commands:")[1]  # no description cut mid-sentence
    assert hc_cli("run", "-h").returncode == 0


def test_errors_are_json_under_json(tmp_path):
    res = hc_cli("inspect", tmp_path / "missing", "--json")
    assert res.returncode == 1
    payload = json.loads(res.stdout)
    assert payload["exit_code"] == 1 and "missing" in payload["error"]
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1


def test_an_input_given_twice_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 8), np.float32))
    x = f"input={tmp_path / 'x.npy'}"
    res = hc_cli("run", tmp_path / "nobundle", "--input", x, "--input", x)
    assert res.returncode == 1 and "--input input is given twice" in res.stderr


def test_where_naming_a_value_no_condition_has_is_refused(tmp_path):
    res = hc_cli("build", ref("TinyHyper"), "--where", "task=1,5", "--out", tmp_path / "b")
    assert res.returncode == 1
    assert "--where task: no condition has task=5 (task takes 0, 1, 2, 3, 4)" in res.stderr
    assert not (tmp_path / "b").exists()


def test_build_without_torch_says_what_to_install(tmp_path):
    """A runtime-only install has no torch: `build` says so in one line, not a traceback."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from hypercompile.cli import main\n"
        f"sys.argv = ['hypercompile', 'build', {ref('TinyHyper')!r}, '--out', "
        f"{str(tmp_path / 'b')!r}]\n"
        "main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1, res.stderr
    assert "needs torch" in res.stderr and "hypercompile[build]" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "model_ref, name",
    [
        ("examples/continual_hypernet/model.py:make", "continual-hypernet"),
        ("examples/morph_hypernet/model.py:make", "morph-hypernet"),
        ("examples/dynamic/zoo.py:BlockDrop", "zoo-blockdrop"),
        ("mypkg.nets:make", "nets"),
    ],
)
def test_default_bundle_names_follow_the_model_not_the_factory(model_ref, name):
    assert _default_name(model_ref) == name


def test_sigterm_during_a_build_leaves_no_temporary_directory(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercompile.cli", "build", ref("TinyHyper"), "--out",
         str(tmp_path / "b")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".b.tmp-*")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".b.tmp-*")), "the build never started writing"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "terminated" in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_build_removes_what_a_killed_build_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".b.tmp-{dead.pid}-0123abcd"
    (left / "graphs").mkdir(parents=True)
    alive = tmp_path / f".b.tmp-{os.getpid()}-4567cdef"  # a build still running: kept
    alive.mkdir()
    res = hc_cli("build", ref("TinyHyper"), "--where", "task=0", "--out", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    assert not left.exists() and alive.exists()


def test_progress_is_a_line_per_stage_when_not_a_terminal(tmp_path):
    res = hc_cli("build", ref("TinyHyper"), "--where", "task=0,1", "--out", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines == ["materialize: 2 step(s)", "verify: 2 step(s)"], res.stderr
    res = hc_cli("profile", tmp_path / "b", "--warmup", 1, "--repeat", 10)
    assert res.returncode == 0 and res.stderr.splitlines() == ["profile: 2 step(s)"], res.stderr
    res = hc_cli("profile", tmp_path / "b", "--repeat", 10, "--json")  # nothing under --json
    assert res.returncode == 0 and res.stderr == "", res.stderr
