"""Each example's README bash block runs verbatim, from a scratch directory that sees the
repository's examples (so `build/` lands there, not in the checkout)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

EXAMPLES = ["continual_hypernet", "morph_hypernet", "hypnettorch_mlp", "dynamic", "app"]


def readme_commands(readme: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S)
    return [line for b in blocks for line in b.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_readme_commands_run(name, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    commands = readme_commands(ROOT / "examples" / name / "README.md")
    assert any(c.startswith("hypercompile build") for c in commands)
    for cmd in commands:
        if cmd.lstrip().startswith("#"):
            continue
        argv = shlex.split(cmd)
        if argv[0] == "python":
            argv[0] = sys.executable
        res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
    assert (tmp_path / "build").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["continual_hypernet", "morph_hypernet", "hypnettorch_mlp"])
def test_hypernet_example_on_tvm_shares_libraries_and_agrees(name, tmp_path):
    pytest.importorskip("tvm", reason="apache-tvm is an optional back end")
    import json

    import numpy as np
    import torch

    import hypercompile as hc
    from hypercompile.frontend.loader import resolve_model

    ref_ = f"{ROOT}/examples/{name}/model.py:make"
    path = hc.build(ref_, out=tmp_path / "b", backends=["tvm"])
    m = json.loads((path / "manifest.json").read_text())
    libs = sorted(p.name for p in (path / "tvm").glob("*.so"))
    assert libs == sorted(f"{g}.so" for g in m["graphs"])  # one library per architecture
    hm, b = resolve_model(ref_), hc.load(path)
    gen = torch.Generator().manual_seed(5)
    for v in m["variants"]:
        assert v["parity"]["tvm"]["max_rel"] <= 1e-4
        xs = [torch.randn(3, *x.shape[1:], generator=gen) for x in hm.example_inputs(v["cond"])]
        want = hm.reference(v["cond"], *xs)
        got = b.run(
            {i["name"]: x.numpy() for i, x in zip(b.inputs, xs)}, backend="tvm", **v["cond"]
        )
        assert np.abs(next(iter(got.values())) - want.detach().numpy()).max() <= 1e-4
