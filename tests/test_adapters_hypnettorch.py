import numpy as np
import pytest
import torch
from conftest import ROOT, manifest

import hypercompile as hc

pytest.importorskip("hypnettorch", reason="hypnettorch is a dev dependency")

REF = str(ROOT / "tests" / "hnet_models.py")


def _check_all_variants(path, hm):
    b = hc.load(path)
    assert b.variants == hm.conditions()
    rng = np.random.default_rng(0)
    shape = hm.input_shape
    for cond in b.variants:
        for batch in (1, 16):
            x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
            want = hm.reference(cond, torch.from_numpy(x)).numpy()
            got = b.run({"x": x}, **cond)["output"]
            assert np.abs(got - want).max() <= 1e-5


def test_hmlp_driving_mlp(tmp_path):
    from hnet_models import hmlp_mlp

    out = hc.build(f"{REF}:hmlp_mlp", out=tmp_path / "h")
    assert len(manifest(out)["graphs"]) == 1
    _check_all_variants(out, hmlp_mlp())


def test_chunked_hmlp_with_per_task_batchnorm_stats(tmp_path):
    from hnet_models import chunked_bn

    hm = chunked_bn()
    assert hm.per_task_stats
    out = hc.build(hm, out=tmp_path / "c")
    m = manifest(out)
    assert len(m["graphs"]) == 1
    assert any("mean_0" in w for w in m["graphs"]["g0"]["weights"])
    _check_all_variants(out, hm)
    # the tasks really differ (their own stats and weights), so binding must be per task
    x = np.ones((1, 10), np.float32)
    b = hc.load(out)
    assert not np.allclose(b.run({"x": x}, task=0)["output"], b.run({"x": x}, task=1)["output"])


def test_unknown_task_is_refused():
    from hnet_models import hmlp_mlp

    hm = hmlp_mlp()
    with pytest.raises(hc.BuildError, match="unknown task 9"):
        hm.build({"task": 9})
