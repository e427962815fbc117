"""Every command in the README and docs/ is run: `bash` blocks line by line and `python`
blocks whole, in order, from a scratch directory that sees the repository's examples (so
`build/` lands there). A block after `<!-- needs: MODULE -->` runs where MODULE imports. `sh`
blocks (installing, a board, a tracker) and blocks after `<!-- not run: REASON -->` cannot run
here: they are checked for syntax (bash -n, compile) and must say why."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!-- (not run|needs): ([^>]*?) -->\n)?```(\w*)\n(.*?)```", re.S)


def blocks(doc: Path) -> list[tuple[str, str, str, str]]:
    """(language, marker, marker text, code) of every fenced block, in order."""
    return [(lang, mark, why, code) for mark, why, lang, code in FENCE.findall(doc.read_text())]


def test_every_doc_is_linked_from_the_readme_and_the_readme_is_short():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for name in DOCS[1:]:
        assert f"({name})" in readme, f"README does not link {name}"


@pytest.mark.parametrize("name", DOCS)
def test_doc_blocks_that_cannot_run_here_say_why_and_parse(name):
    for lang, mark, why, code in blocks(ROOT / name):
        if lang == "sh" or mark == "not run":
            assert lang in ("sh", "bash", "python"), f"{name}: a {lang} block marked not run"
            if lang == "python":
                compile(code, name, "exec")
            else:
                res = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
                assert res.returncode == 0, f"{name}: {res.stderr}\n{code}"
            if mark == "not run":
                assert why.strip(), f"{name}: say why a block is not run"


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCS)
def test_doc_commands_run(name, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "build").mkdir()
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    ran = 0
    for lang, mark, why, code in blocks(ROOT / name):
        if lang not in ("bash", "python") or mark == "not run":
            continue
        if mark == "needs" and importlib.util.find_spec(why.strip()) is None:
            continue
        if lang == "python":
            commands = [[sys.executable, "-c", code]]
        else:
            commands = [shlex.split(line, comments=True) for line in code.splitlines()]
        for argv in filter(None, commands):
            if argv[0] == "python":
                argv[0] = sys.executable
            res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert res.returncode == 0, f"{name}: {argv}\n{res.stdout[-2000:]}\n{res.stderr}"
            ran += 1
    runnable = [b for b in blocks(ROOT / name) if b[0] in ("bash", "python") and b[1] != "not run"]
    assert ran or not runnable
