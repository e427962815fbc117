"""TVM on the CPU: weight transforms lifted out of the per-call function, and `--tune-trials`
(MetaSchedule's evolutionary search, measured here or on a board through an RPC tracker) with
its JSON database kept in the bundle and reused by a rebuild."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ref
from dyn_models import Router

import hypercompile as hc
from hypercompile.cli import main

pytest.importorskip("tvm", reason="apache-tvm is an optional back end")

TRIALS = 4


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("t") / "b"
    first = json.loads(
        (
            hc.build(Router(), out=out, backends=["tvm"], tune_trials=TRIALS, parity_inputs=10)
            / "manifest.json"
        ).read_text()
    )
    return out, first


def test_tuned_bundle_holds_its_database_and_passes_parity(tuned):
    out, m = tuned
    assert m["graphs"], "the program has subgraphs"
    for gid, g in m["graphs"].items():
        t = g["tvm_tuning"]
        assert t["database"] == f"tvm/tuning/{gid}"
        for name in ("database_workload.json", "database_tuning_record.json", "tuning.json"):
            assert f"tvm/tuning/{gid}/{name}" in m["files"]
        assert t["search"] == "MetaSchedule evolutionary" and t["measured_on"] == "this machine"
        assert t["trials"] == TRIALS and not t["reused"]
        # searched here, or every tuned function taken from an earlier graph of the build
        assert t["trials_run"] >= 1 or t["shared_functions"] >= 1
        assert t["functions"] >= 1 and t["tuning_s"] > 0
        records = (out / t["database"] / "database_tuning_record.json").read_text().splitlines()
        assert len(records) == t["measured"] >= t["trials_run"]
        info = json.loads((out / t["database"] / "tuning.json").read_text())
        for f in info["per_function"].values():  # a tuned schedule only where it is faster
            assert f["used"] == (f["tuned_s"] is not None and f["tuned_s"] < f["default_s"])
        assert t["tuned_functions"] == sum(f["used"] for f in info["per_function"].values())
    # Router's two experts are the same function: the second graph takes the first's records
    shared = [g["tvm_tuning"] for g in m["graphs"].values() if g["tvm_tuning"]["shared_functions"]]
    assert shared and all(t["trials_run"] == 0 for t in shared)
    assert m["variants"][0]["parity"]["tvm"]["max_rel"] <= 1e-4
    b, model, gen = hc.load(out), Router(), torch.Generator().manual_seed(3)
    for _ in range(10):
        x = torch.randn(1, 5, generator=gen)
        got = b.run({"x": x.numpy()}, backend="tvm")["output"]
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-4)


def test_rebuild_reuses_the_database_without_new_trials(tuned, tmp_path):
    out, first = tuned
    before = {str(p): p.read_text() for p in (out / "tvm/tuning").glob("*/database_*.json")}
    m = json.loads(
        (
            hc.build(Router(), out=out, backends=["tvm"], tune_trials=TRIALS, parity_inputs=10)
            / "manifest.json"
        ).read_text()
    )
    for gid, g in m["graphs"].items():
        t = g["tvm_tuning"]
        assert t["reused"] and t["trials_run"] == 0
        then = first["graphs"][gid]["tvm_tuning"]
        if then["trials_run"]:  # it searched then; now it only reads its database
            assert t["tuning_s"] < then["tuning_s"]
    after = {str(p): p.read_text() for p in (out / "tvm/tuning").glob("*/database_*.json")}
    assert after == before
    hc.load(out)  # every new file is hashed in the manifest


def test_tuning_is_refused_where_it_cannot_measure(tmp_path):
    with pytest.raises(hc.BuildError, match="measured on this machine's CPU; target x86-cuda"):
        hc.build(
            ref("TinyHyper"),
            target="x86-cuda",
            out=tmp_path / "c",
            backends=["tvm"],
            tune_trials=TRIALS,
        )
    with pytest.raises(hc.BuildError, match="add --backend tvm"):
        hc.build(ref("TinyHyper"), out=tmp_path / "o", backends=["onnxruntime"], tune_trials=2)
    res = CliRunner().invoke(
        main,
        [
            "build",
            ref("TinyHyper"),
            "--target",
            "x86-cuda",
            "--backend",
            "tvm",
            "--tune-trials",
            "2",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert res.exit_code == 1 and "measured on this machine's CPU" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_weight_transforms_run_once_at_load_not_per_call(tiny_tvm_bundle):
    """Gemm's weight transpose is lifted into `main_transform_params`, which the runner calls
    once when it binds a variant's weights; the per-call function takes the result."""
    from hypercompile.runtime.runners.tvm import (
        SHARED_TRANSFORM,
        STATIC_MAIN,
        import_tvm,
        transform_weights,
    )

    path = tiny_tvm_bundle
    tvm = import_tvm()
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(path / "tvm" / "g0.so")), tvm.cpu())
    # one transform for `main` (dynamic batch) and its batch-1 copy
    assert vm.module.implements_function(SHARED_TRANSFORM)
    assert vm.module.implements_function(STATIC_MAIN)
    w = [tvm.runtime.tensor(np.ones(s, np.float32)) for s in [(16, 8), (16,), (4, 16), (4,)]]
    lifted, seconds = transform_weights(vm, w)
    assert [tuple(t.shape) for t in lifted] != [tuple(t.shape) for t in w] and seconds >= 0


def test_batch_one_runs_the_static_copy_and_other_batches_the_dynamic_main(tiny_tvm_bundle):
    """A graph with a dynamic batch also has `main` specialized at batch 1 (static shapes:
    static schedules, tunable); calls at batch 1 take it, others the dynamic `main`, and both
    answer as the model does."""
    import torch
    from models import TinyHyper

    b = hc.load(tiny_tvm_bundle)
    variant = b.manifest.variants[0]
    runner = b.load_runner(variant, "tvm")
    assert runner.static is not None
    used = []
    for name in ("fn", "static"):
        fn = getattr(runner, name)
        setattr(runner, name, lambda *a, fn=fn, name=name: used.append(name) or fn(*a))
    model = TinyHyper()
    for batch in (1, 3, 1):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        (got,) = runner.run({"input": x})
        want = model.reference(variant.cond, torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert used == ["static", "fn", "static"]
