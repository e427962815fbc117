"""Remote profiling through a real TVM RPC tracker and server on 127.0.0.1, started with the
README's commands, as a user would start them on a board."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import manifest, write_manifest

import hypercompile as hc

pytest.importorskip("tvm", reason="apache-tvm is an optional back end")
pytest.importorskip("tornado", reason="the TVM RPC tracker needs tornado")
pytest.importorskip("cloudpickle", reason="the TVM RPC server needs cloudpickle")

KEY = "test-cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: str) -> subprocess.Popen:
    # own process group: the server forks workers, and they must go down with it
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def _registered(port: int) -> bool:
    from tvm import rpc

    try:
        return KEY in rpc.connect_tracker("127.0.0.1", port).summary().get("queue_info", {})
    except Exception:
        return False


@pytest.fixture(scope="module")
def tracker():
    """`python -m tvm.exec.rpc_tracker` and `python -m tvm.exec.rpc_server --tracker ... --key
    test-cpu` on loopback; yields HOST:PORT once the tracker lists the key."""
    from hypercompile.runtime.runners.tvm import import_tvm

    import_tvm()
    port, server_port = _free_port(), _free_port()
    procs = []
    try:
        procs.append(
            _start(
                "tvm.exec.rpc_tracker",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--port-end={port + 1}",
            )
        )
        # the tracker must listen before the server registers, or the server retries slowly
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert procs[0].poll() is None, procs[0].stderr.read().decode()[-2000:]
            time.sleep(0.3)
        procs.append(
            _start(
                "tvm.exec.rpc_server",
                f"--tracker=127.0.0.1:{port}",
                f"--key={KEY}",
                "--host=127.0.0.1",
                f"--port={server_port}",
                f"--port-end={server_port + 1}",
            )
        )
        deadline = time.monotonic() + 90
        while not _registered(port):
            assert time.monotonic() < deadline, "the RPC server never registered"
            assert procs[1].poll() is None, procs[1].stderr.read().decode()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture
def tvm_bundle(tiny_tvm_bundle):
    return tiny_tvm_bundle  # built once for the session (conftest); profiles go into copies


def hc_cli(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_profile_through_the_tracker_stores_the_boards_profile(tracker, tvm_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tvm_bundle, dst)
    res = hc_cli("profile", dst, "--rpc", tracker, "--key", KEY, "--repeat", 30, "--json")
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    m = manifest(dst)
    key = printed["device"]
    entry = m["profile"][key]
    assert entry["source"] == "rpc" and entry["rpc"] == {"tracker": tracker, "key": KEY}
    fp = entry["device"]
    assert fp["kind"] == "tvm-rpc" and fp["rpc_key"] == KEY and fp["arch"] == "x86_64"
    assert fp["cpu"] == m["target"]["tvm_target"]["mcpu"]  # LLVM's name, asked on the board
    for v in m["variants"]:
        r = entry["variants"][v["id"]]["results"]["tvm"]["1"]
        assert r["runs"] == 30 and 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["flops"] == 2 * (8 * 16 + 16 * 4)
        assert entry["variants"][v["id"]]["best_backend"] == "tvm"
    hc.load(dst, verify=True)  # the hashes still check
    # a profile taken over RPC is the board's, never this machine's ...
    with pytest.raises(hc.ProfileError, match="no profile for this device"):
        hc.load(dst).select(budget_ms=1e6, task=0)
    # ... unless asked for by name
    b = hc.load(dst, device=key)
    choice = b.choose(1e6, task=0)
    assert choice.backend == "tvm" and choice.variant.id in entry["variants"]
    out = b.run({"input": np.ones((1, 8), np.float32)}, budget_ms=1e6, task=0)
    assert out["output"].shape == (1, 4)
    res = hc_cli("inspect", dst)
    assert f"profile {key}" in res.stdout and f"TVM RPC key {KEY}" in res.stdout


def test_an_unknown_device_key_is_a_clear_error(tracker, tvm_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tvm_bundle, dst)
    res = hc_cli("profile", dst, "--rpc", tracker, "--key", "no-such-board")
    assert res.returncode == 1
    assert "no device with key 'no-such-board'" in res.stderr and KEY in res.stderr


def _store_checks(path, corrupt: bool) -> None:
    """Give the bundle's TVM variants stored PyTorch checks, as a bundle built for another
    device has (optionally wrong ones)."""
    import torch
    from models import TinyHyper

    from hypercompile.core import tensors as fmt
    from hypercompile.runtime.checks import pack_checks

    m = manifest(path)
    (path / "checks").mkdir(exist_ok=True)
    for v in m["variants"]:
        x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
        want = TinyHyper().reference(v["cond"], torch.from_numpy(x)).detach().numpy()
        rel = f"checks/{v['id']}.safetensors"
        fmt.write_tensors(path / rel, pack_checks([{"input": x}], [[want + corrupt]]))
        m["files"][rel] = fmt.sha256_file(path / rel)
        m.setdefault("sizes", {})[rel] = (path / rel).stat().st_size
        v["checks"] = rel
    write_manifest(path, m)


def test_the_board_runs_the_stored_checks_before_it_is_timed(tracker, tvm_bundle, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for dst, corrupt in ((good, False), (bad, True)):
        shutil.copytree(tvm_bundle, dst)
        _store_checks(dst, corrupt)
    res = hc_cli("profile", good, "--rpc", tracker, "--key", KEY, "--repeat", 5, "--json")
    assert res.returncode == 0, res.stderr
    entry = manifest(good)["profile"][json.loads(res.stdout)["device"]]
    for v in entry["variants"].values():
        assert v["device_check"]["max_abs"] <= 1e-4 and v["device_check"]["inputs"] == 1
    res = hc_cli("profile", bad, "--rpc", tracker, "--key", KEY, "--repeat", 5)
    assert res.returncode == 1 and "on the board" in res.stderr
    assert "exceeds tolerance" in res.stderr
    assert manifest(bad)["profile"] == {}  # no profile for a library that answers wrongly


def _small_relax_module():
    """A Relax `main` with static shapes (relu(x @ w)), imported from ONNX as builds do: TIR
    functions MetaSchedule can measure."""
    import onnx
    from onnx import TensorProto, helper
    from tvm.relax.frontend.onnx import from_onnx

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "small",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [32, 16]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return from_onnx(model)


def test_tuning_measures_on_the_board_through_the_tracker(tracker):
    """`--tune-rpc HOST:PORT --key KEY`: candidates are built here and timed by MetaSchedule's
    RPC runner on the board registered under KEY (this machine, on loopback)."""
    import tvm

    from hypercompile.compilers.base import TuneRequest
    from hypercompile.compilers.tvm import tuning

    host, port = tracker.rsplit(":", 1)
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    files = tuning.tune(_small_relax_module(), target, TuneRequest(4, rpc=(host, int(port), KEY)))
    info = json.loads(files["tuning.json"])
    assert info["measured_on"] == f"rpc {tracker} key {KEY}"
    assert info["trials_run"] >= 1 and info["measured"] == info["trials_run"]
    records = [json.loads(line) for line in files["database_tuning_record.json"].splitlines()]
    assert records and all(r[1][1] for r in records), records  # every record has run times
    # measured on the board, the board's figure decides: the tuned schedules are used
    assert info["tuned_functions"] == info["functions"] >= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tune-rpc", "127.0.0.1:9190"], "--tune-rpc and --key tune on a board"),
        (["--tune-trials", "2", "--tune-rpc", "127.0.0.1:9190"], "--tune-rpc needs --key"),
        (["--tune-trials", "2", "--tune-rpc", "nohost", "--key", "k"], "must look like HOST:PORT"),
        (["--tune-trials", "2", "--key", "k"], "add --tune-rpc"),
    ],
)
def test_tune_rpc_options_are_checked_before_the_build(args, message, tmp_path):
    from conftest import ref

    res = hc_cli("build", ref("TinyHyper"), "--backend", "tvm", "--out", tmp_path / "b", *args)
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
