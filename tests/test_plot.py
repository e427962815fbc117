"""`profile --plot`: the x axis is the model's quality when declared, else parameters, else the
condition; every point has a p10-p90 bar; the Pareto front counts a latency difference only
beyond the noise the profile measured."""

import copy

import pytest
from models import Widths

import hypercompile as hc
from hypercompile.core.manifest import Manifest
from hypercompile.devtools.plot import plot_profile, profile_points
from hypercompile.devtools.profile import pareto_front


def test_a_difference_within_the_noise_is_no_trade_off():
    points = [(1, 1.00), (2, 1.04)]  # more parameters, slower by 0.04 ms
    assert pareto_front(points) == [0, 1]  # without noise: a trade-off
    assert pareto_front(points, [0.05, 0.05]) == [1]  # within the noise: 2 is simply better
    assert pareto_front([(1, 1.0), (2, 1.2)], [0.05, 0.05]) == [0, 1]  # beyond it: both


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    path = hc.build(Widths(), out=tmp_path_factory.mktemp("w") / "widths")
    device = hc.profile(path, warmup=1, repeat=10)["device"]
    return Manifest.load(path), device


def _set(m, device, medians, noise, spread=0.2):
    """The profile's batch-1 timings replaced: median, drift (noise) and spread per variant."""
    m = copy.deepcopy(m)
    for v, med in zip(m.variants, medians):
        r = m.profile[device].variants[v.id].results["onnxruntime"]["1"]
        r.update(median_ms=med, p90_ms=med + 0.1, spread_ms=spread, drift_ms=noise)
    return m


def test_x_is_quality_then_parameters_then_the_condition(profiled):
    m, device = profiled
    assert profile_points(m, device)[1] == "quality"  # Widths declares quality
    m = copy.deepcopy(m)
    for v in m.variants:
        v.quality = None
    points, x, _ = profile_points(m, device)
    assert x == "params" and [p["x"] for p in points] == [v.params for v in m.variants]
    for v in m.variants:
        v.params = 100
    points, x, _ = profile_points(m, device)
    assert x == "condition" and [p["x"] for p in points] == [0, 1, 2]
    assert not any(p["pareto"] for p in points)  # a condition has no better side


def test_points_carry_p10_p90_bars(profiled):
    m, device = profiled
    points, _, _ = profile_points(_set(m, device, [1.0, 2.0, 3.0], 0.01, spread=0.3), device)
    assert [(p["median_ms"], p["p10_ms"], p["p90_ms"]) for p in points] == [
        (1.0, pytest.approx(0.8), 1.1),
        (2.0, pytest.approx(1.8), 2.1),
        (3.0, pytest.approx(2.8), 3.1),
    ]


def test_the_front_is_marked_only_beyond_the_noise(profiled):
    m, device = profiled
    quiet = _set(m, device, [1.00, 1.02, 1.04], 0.001)
    assert [p["pareto"] for p in profile_points(quiet, device, "params")[0]] == [True] * 3
    noisy = _set(m, device, [1.00, 1.02, 1.04], 0.05)
    front = [p["pareto"] for p in profile_points(noisy, device, "params")[0]]
    assert front == [False, False, True]  # the widest is not measurably slower


def test_the_plot_is_written_on_every_axis(profiled, tmp_path):
    pytest.importorskip("matplotlib")
    m, device = profiled
    for x in ("auto", "quality", "params", "condition"):
        png = plot_profile(m, device, tmp_path / f"{x}.png", x=x)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(hc.HypercompileError, match="x axis must be one of"):
        profile_points(m, device, "size")
