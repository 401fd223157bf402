import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("[0-9][0-9]_*.py"))


def test_tutorials_exist_and_are_numbered():
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, len(TUTORIALS) + 1)]
    for p in TUTORIALS:
        text = p.read_text()
        assert text.startswith("# %% [markdown]"), f"{p.name} is not a jupytext percent script"
        assert re.search(r"^(import|from) autogradlens", text, re.M), f"{p.name} must import the library"
        assert "class Value" not in text and "def trace" not in text, f"{p.name} must not redefine the library"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip(), "a tutorial prints real numbers"


def test_jupytext_reads_them_as_notebooks():
    jupytext = pytest.importorskip("jupytext")
    for p in TUTORIALS:
        nb = jupytext.read(p)
        assert sum(c.cell_type == "markdown" for c in nb.cells) >= 2


def test_readme_quick_example_runs(tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    code += "\nprint(lens.mirror(loss, params=model).to_text())\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "MPLBACKEND": "Agg"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "graph.svg").exists()
    blocks = readme.split("```text\n")
    shown_trace, shown_mirror = blocks[1].split("```")[0], blocks[2].split("```")[0]
    assert r.stdout.startswith(shown_trace), "the README shows the real output of its example"

    def columns(text):  # name and verdict; the last digits of maxdiff depend on the CPU's BLAS
        return [(line.split("|")[0].strip(), line.split("|")[2].strip()) for line in text.splitlines() if "|" in line]

    assert columns(r.stdout[len(shown_trace):]) == columns(shown_mirror)
