"""Reliability under load and against hostile files: TVM from many threads, libraries loaded
once, builds that never take over or lose a directory, inputs and files that are not what they
claim."""

import json
import os
import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import manifest, ref

import hypercompile as hc
from hypercompile.builder.build import _exchange
from hypercompile.errors import BuildError, BundleError, InputError


def test_one_tvm_runner_from_16_threads_answers_exactly(tiny_tvm_bundle):
    pytest.importorskip("tvm")
    b = hc.load(tiny_tvm_bundle)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(16)]
    want = [b.run({"input": x}, task=1, backend="tvm")["output"] for x in xs]
    wrong = []

    def work(k: int) -> None:
        for i in range(40):
            j = (i + k) % len(xs)
            if not np.array_equal(
                b.run({"input": xs[j]}, task=1, backend="tvm")["output"], want[j]
            ):
                wrong.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_reloading_tvm_runners_loads_each_library_once(tiny_tvm_bundle):
    pytest.importorskip("tvm")
    from hypercompile.runtime.runners import tvm as runner

    b = hc.load(tiny_tvm_bundle, cache_size=1)
    x = np.ones((1, 8), np.float32)
    for task in (0, 1, 0, 1, 2, 0):  # every switch evicts and reloads a runner
        b.run({"input": x}, task=task, backend="tvm")
    libs = len(runner._LIBS)
    for task in (3, 4, 0, 1, 2, 3, 4) * 3:
        b.run({"input": x}, task=task, backend="tvm")
    assert len(runner._LIBS) == libs  # one graph: one library, however often it is bound


def test_a_directory_with_someone_elses_manifest_is_never_replaced(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text(json.dumps({"name": "my web app", "icons": []}))
    (site / "index.html").write_text("<html></html>")
    with pytest.raises(BuildError, match="is not a bundle"):
        hc.build(ref("TinyHyper"), out=site)
    assert sorted(os.listdir(site)) == ["index.html", "manifest.json"]


def test_directories_are_exchanged_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("new")
    (b / "f").write_text("old")
    if not _exchange(a, b):
        pytest.skip("this system has no renameat2 RENAME_EXCHANGE")
    assert (b / "f").read_text() == "new" and (a / "f").read_text() == "old"


def test_a_reader_of_a_rebuilt_bundle_is_told_so(tiny_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    old = hc.load(out)
    hc.build(ref("TinyHyper"), out=out, where={"task": [0, 1]})  # fewer tasks, new files
    assert len(manifest(out)["variants"]) == 2
    with pytest.raises(BundleError, match="replaced .* since it was loaded"):
        old.run({"input": np.ones((1, 8), np.float32)}, task=3)  # its weight file is gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left over


def test_big_endian_inputs_are_refused(tiny_bundle):
    b = hc.load(tiny_bundle)
    with pytest.raises(InputError, match="byte-order"):
        b.run({"input": np.ones((1, 8), ">f4")}, task=0)


def test_weight_files_must_be_regular_files_of_the_recorded_size(tiny_copy):
    weights = tiny_copy / "weights/v0000.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(BundleError, match="not a regular file"):
        hc.load(tiny_copy)  # would block reading a FIFO
    weights.unlink()
    with open(weights, "wb") as f:
        f.truncate(20 * 2**30)  # sparse: 20 GB that take no disk
    with pytest.raises(BundleError, match="21474836480 bytes, the manifest says"):
        hc.load(tiny_copy)


def test_an_internal_error_is_one_line_not_a_traceback(tiny_bundle, monkeypatch):
    import hypercompile.runtime as runtime
    from hypercompile.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(runtime, "load", broken)
    res = CliRunner().invoke(main, ["inspect", str(tiny_bundle)])
    assert res.exit_code == 2
    assert "internal error (RuntimeError: something broke)" in res.output
    assert "Traceback" not in res.output and "second line" not in res.output
