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

EXAMPLES = ["continual_hypernet", "morph_hypernet", "hypnettorch_mlp", "dynamic"]


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
