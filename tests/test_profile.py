"""Profiling on this machine and selection by latency budget: real ONNX Runtime sessions, real
timings of the morph example (four widths, declaring quality scores that disagree with their
size: see models.RANKED_MORPH_QUALITY), profiles keyed by device fingerprint."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import manifest, ref
from models import RANKED_MORPH_QUALITY

import hypercompile as hc
from hypercompile.devtools import profile as P
from hypercompile.devtools.measure import best_backend, graph_macs

MORPH = ref("ranked_morph")  # the morph example with its declared quality scores changed
# what a budget every width fits selects: 16 scores best, 32 ties it (within 2 %) and has more
# parameters; 64 has the most parameters but scores clearly worse
BEST_WIDTH = 32


def hc_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "hypercompile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def morph(tmp_path_factory):
    return hc.build(MORPH, out=tmp_path_factory.mktemp("m") / "morph")


@pytest.fixture(scope="module")
def profiled(morph, tmp_path_factory):
    """The morph bundle profiled through the CLI, as a user would; (path, printed JSON)."""
    dst = tmp_path_factory.mktemp("p") / "morph"
    shutil.copytree(morph, dst)
    plot = dst.parent / "pareto.png"
    res = hc_cli("profile", dst, "--warmup", 5, "--repeat", 200, "--plot", plot, "--json")
    assert res.returncode == 0, res.stderr
    return dst, json.loads(res.stdout)


def _p90s(path):
    m = manifest(path)
    key = P.fingerprint_key(P.local_fingerprint())
    prof = m["profile"][key]
    return {
        v["id"]: prof["variants"][v["id"]]["results"]["onnxruntime"]["1"]["p90_ms"]
        for v in m["variants"]
    }


def _width_macs(w, batch=1):
    return batch * (64 * w + w * w + w * 10)


def test_profile_records_stats_flops_and_memory_per_variant(profiled):
    path, printed = profiled
    key = P.fingerprint_key(P.local_fingerprint())
    assert printed["device"] == key
    m = manifest(path)
    entry = m["profile"][key]
    assert entry == printed["profile"] and entry["device"] == P.local_fingerprint()
    assert entry["device"]["cores"] >= 1 and entry["device"]["backends"]["onnxruntime"]
    assert set(entry["variants"]) == {v["id"] for v in m["variants"]}
    for v in m["variants"]:
        rec = entry["variants"][v["id"]]
        assert rec["cond"] == v["cond"] and rec["params"] == v["params"]
        assert rec["quality"] == v["quality"] and rec["best_backend"] == "onnxruntime"
        r = rec["results"]["onnxruntime"]["1"]
        assert r["runs"] == 200
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["spread_ms"] >= 0 and r["std_ms"] >= 0
        assert r["flops"] == 2 * _width_macs(v["cond"]["width"])
        assert r["gflops_per_s"] == pytest.approx(r["flops"] / r["median_ms"] / 1e6, rel=1e-3)
        assert r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0
    # only the manifest changed: every hash still checks
    hc.load(path, verify=True)


def test_flops_scale_with_the_batch(morph):
    m = manifest(morph)
    g = m["graphs"][m["variants"][2]["graph"]]  # width 32
    model = (morph / g["path"]).read_bytes()
    assert graph_macs(model, 1) == _width_macs(32)
    assert graph_macs(model, 7) == _width_macs(32, 7)


def _best_quality(fitting, quality, params):
    """The documented rule: the highest declared quality, scores within 2 % of the best count
    as equal, the most parameters breaks the tie."""
    top = max(quality[v] for v in fitting)
    return max((v for v in fitting if quality[v] >= 0.98 * top), key=params.__getitem__)


def test_budget_picks_the_best_quality_variant_whose_p90_fits(profiled):
    path, _ = profiled
    b = hc.load(path)
    p90 = _p90s(path)
    params = {v.id: v.params for v in b.manifest.variants}
    quality = {v.id: v.quality for v in b.manifest.variants}
    width = {v.id: v.cond["width"] for v in b.manifest.variants}
    assert {width[v]: q for v, q in quality.items()} == RANKED_MORPH_QUALITY
    # the scores disagree with the parameter count, and a near tie is not the single best
    assert max(quality, key=quality.__getitem__) != max(params, key=params.__getitem__)
    assert width[_best_quality(list(p90), quality, params)] == BEST_WIDTH
    assert width[max(quality, key=quality.__getitem__)] != BEST_WIDTH
    cuts = sorted(set(p90.values()))
    budgets = [(lo + hi) / 2 for lo, hi in zip(cuts, cuts[1:])] + [cuts[-1] * 2]
    x = np.ones((1, 64), np.float32)
    np.save(path.parent / "x.npy", x)
    for i, budget in enumerate(budgets):
        fitting = [vid for vid, t in p90.items() if t <= budget]
        want = _best_quality(fitting, quality, params)
        got = b.select(budget_ms=budget)
        assert got.id == want, (budget, p90)
        outs = b.run({"x": x}, budget_ms=budget)
        assert np.array_equal(outs["output"], b.run({"x": x}, **got.cond)["output"])
        if i in (0, len(budgets) - 1):  # the command line agrees
            res = hc_cli(
                "run",
                path,
                "--input",
                f"x={path.parent / 'x.npy'}",
                "--budget-ms",
                budget,
                "--json",
            )
            assert res.returncode == 0, res.stderr
            sel = json.loads(res.stdout)["selected"]
            assert sel["cond"] == got.cond and sel["p90_ms"] == p90[want] <= budget


def test_a_budget_below_the_fastest_variant_is_refused(profiled, tmp_path):
    path, _ = profiled
    fastest = min(_p90s(path).values())
    with pytest.raises(hc.BudgetError, match="no variant fits a budget"):
        hc.load(path).select(budget_ms=fastest * 0.5)
    np.save(tmp_path / "x.npy", np.ones((1, 64), np.float32))
    res = hc_cli("run", path, "--input", f"x={tmp_path / 'x.npy'}", "--budget-ms", fastest * 0.5)
    assert res.returncode == 1
    assert "no variant fits a budget" in res.stderr and "Traceback" not in res.stderr
    assert f"p90 {fastest:.4g} ms" in res.stderr


def test_budget_honours_conditions_and_the_batch(profiled):
    b = hc.load(profiled[0])
    assert b.select(budget_ms=1e6).cond == {"width": BEST_WIDTH}
    assert b.select(budget_ms=1e6, width=16).cond == {"width": 16}
    with pytest.raises(hc.ProfileError, match="at batch >= 8"):
        b.select(budget_ms=1e6, batch_size=8)  # profiled at batch 1 only
    with pytest.raises(hc.ConditionError, match="no variant matches"):
        b.select(budget_ms=1e6, width=5)


def _foreign(path, tmp_path, *, rekey):
    """A copy whose profile claims another device: with its key recomputed, or only the device
    edited (a stale key)."""
    dst = tmp_path / ("rekeyed" if rekey else "edited")
    shutil.copytree(path, dst)
    m = manifest(dst)
    ((key, entry),) = m["profile"].items()
    entry["device"]["cpu"] = "Some Other CPU"
    new_key = P.fingerprint_key(entry["device"]) if rekey else key
    m["profile"] = {new_key: entry}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst, new_key


@pytest.mark.parametrize("rekey", [True, False])
def test_a_profile_from_another_device_is_never_used_silently(profiled, tmp_path, rekey):
    dst, key = _foreign(profiled[0], tmp_path, rekey=rekey)
    b = hc.load(dst)
    with pytest.raises(hc.ProfileError, match="no profile for this device") as e:
        b.select(budget_ms=1e6)
    assert key in str(e.value) and "Some Other CPU" in str(e.value)
    assert "hypercompile profile" in str(e.value)
    x = np.ones((1, 64), np.float32)
    assert b.run({"x": x}, width=8)["output"].shape == (1, 10)  # conditions still work
    if rekey:  # asked for by name, it is used
        assert hc.load(dst, device=key).select(budget_ms=1e6).cond == {"width": BEST_WIDTH}


def test_without_any_profile_a_budget_asks_for_one(morph, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 64), np.float32))
    res = hc_cli("run", morph, "--input", f"x={tmp_path / 'x.npy'}", "--budget-ms", 5)
    assert res.returncode == 1 and "no profile for this device" in res.stderr
    assert P.fingerprint_key(P.local_fingerprint()) in res.stderr


def test_repeated_profiles_agree_within_their_spread(morph, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(morph, dst)
    _, first = P.profile(dst, warmup=20, repeat=400, store=False)
    _, second = P.profile(dst, warmup=20, repeat=400, store=False)
    for vid, rec in first.variants.items():
        a = rec.results["onnxruntime"]["1"]
        b = second.variants[vid].results["onnxruntime"]["1"]
        # the noise each profile reports: the middle 80 % of its runs, and how far the
        # medians of its rounds moved
        noise = a["spread_ms"] + b["spread_ms"] + a["drift_ms"] + b["drift_ms"]
        assert abs(a["median_ms"] - b["median_ms"]) <= noise, (a, b)


def test_profiling_again_merges_and_inspect_shows_profiles(profiled, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(profiled[0], dst)
    res = hc_cli("profile", dst, "--batch", 4, "--repeat", 20, "--warmup", 2)
    assert res.returncode == 0, res.stderr
    assert "median ms" in res.stdout and "width=64" in res.stdout
    key = P.fingerprint_key(P.local_fingerprint())
    results = manifest(dst)["profile"][key]["variants"]["v0003"]["results"]["onnxruntime"]
    assert sorted(results, key=int) == ["1", "4"]  # batch 1 kept from the first profile
    assert hc.load(dst).select(budget_ms=1e6, batch_size=3).cond == {"width": BEST_WIDTH}
    res = hc_cli("inspect", dst, "--json")
    info = json.loads(res.stdout)
    assert info["this_device"] == key and key in info["profile"]
    res = hc_cli("inspect", dst)
    assert f"profile {key} (this device)" in res.stdout and "p90 ms" in res.stdout


def test_pareto_front_on_a_hand_checked_example():
    points = [(1, 1.0), (2, 2.0), (3, 1.5), (4, 4.0), (4, 3.0), (0.5, 0.5), (3, 1.5)]
    # (2, 2.0) is beaten by (3, 1.5); (4, 4.0) by (4, 3.0); equal points both stay
    assert P.pareto_front(points) == [5, 0, 2, 6, 4]
    assert P.pareto_front([]) == []
    assert P.pareto_front([(1, 1)]) == [0]


def test_plot_shows_every_variant_and_the_pareto_front(profiled):
    from hypercompile.core.manifest import Manifest
    from hypercompile.devtools.plot import profile_points

    path, printed = profiled
    png = path.parent / "pareto.png"
    assert printed["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    points, x, batch = profile_points(Manifest.load(path), printed["device"])
    assert x == "quality" and batch == 1  # the model declares quality: the plot's default
    assert sorted(p["label"] for p in points) == [f"width={w}" for w in (16, 32, 64, 8)]
    xy = [(p["x"], p["median_ms"]) for p in points]
    front = P.pareto_front(xy, [p["noise_ms"] for p in points])
    assert [i for i, p in enumerate(points) if p["pareto"]] == sorted(front)
    assert points[max(range(4), key=lambda i: points[i]["x"])]["pareto"]  # the best: always


def test_dynamic_program_paths_and_branches(dyn_bundle, tmp_path):
    path = tmp_path / "ee"
    shutil.copytree(dyn_bundle("EarlyExit"), path)  # profiling stores into the manifest
    folder = tmp_path / "inputs"
    folder.mkdir()
    xs = np.random.default_rng(3).standard_normal((40, 8)).astype(np.float32)
    np.save(folder / "x.npy", xs)
    _, entry = P.profile(path, warmup=2, repeat=80, inputs=folder)
    (rec,) = entry.variants.values()
    r = rec.results["onnxruntime"]["1"]
    assert entry.settings["inputs"] == str(folder)
    assert sum(p["count"] for p in r["paths"]) == 80
    assert len(r["paths"]) >= 2  # the exits are taken on these inputs
    # a stage is Linear(8, 8) + head Linear(8, 4): 96 MACs; a path runs 1, 2 or 3 stages
    assert {p["flops"] for p in r["paths"]} <= {192, 384, 576}
    assert len({p["flops"] for p in r["paths"]}) >= 2
    # the decision at the first exit is met on every run
    first = max(r["branches"].values(), key=lambda c: sum(c["taken"].values()))
    assert sum(first["taken"].values()) == 80
    # what the paths say agrees with running the inputs through the bundle
    b = hc.load(path)
    exits = [int(b.run({"x": xs[i : i + 1]})[b.outputs[1]["name"]]) for i in range(40)]
    assert len(set(exits)) == len(r["paths"])


def test_profile_command_refuses_what_it_cannot_time(morph, tmp_path):
    res = hc_cli("profile", morph, "--backend", "tvm")
    assert res.returncode == 1 and "no tvm artifacts" in res.stderr
    res = hc_cli("profile", morph, "--rpc", "127.0.0.1:1")
    assert res.returncode == 1 and "--key" in res.stderr


def test_auto_backend_records_and_runs_the_fastest(tmp_path):
    pytest.importorskip("tvm")
    path = hc.build(ref("TinyHyper"), out=tmp_path / "t", backends=["auto"], where={"task": [0, 1]})
    m = manifest(path)
    key = P.fingerprint_key(P.local_fingerprint())
    entry = m["profile"][key]
    assert entry["settings"]["auto"] is True
    b = hc.load(path)
    x = np.ones((1, 8), np.float32)
    for v in m["variants"]:
        assert set(v["artifacts"]) == {"onnxruntime", "tvm"}
        rec = entry["variants"][v["id"]]
        timed = {be: r["1"]["p90_ms"] for be, r in rec["results"].items()}
        assert set(timed) == {"onnxruntime", "tvm"}
        # the target's first back end stays unless another is faster beyond the noise
        assert rec["best_backend"] == best_backend(rec["results"], m["target"]["backends"])
        b.run({"x": x} if b.inputs[0]["name"] == "x" else {"input": x}, **v["cond"])
        assert b._plans[v["id"]].backend == rec["best_backend"]


def test_budget_selection_stays_torch_free(profiled):
    code = (
        "import sys, numpy as np, hypercompile as hc\n"
        f"b = hc.load({str(profiled[0])!r})\n"
        "b.run({'x': np.ones((1, 64), np.float32)}, budget_ms=1e6)\n"
        "print('MODULES', *[m in sys.modules for m in ('torch', 'tvm', 'onnx', 'matplotlib')])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "MODULES False False False False" in res.stdout
