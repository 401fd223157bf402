import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).parent.parent / "tutorials").glob("[0-9][0-9]_*.py"))


def test_tutorials_exist_and_are_numbered():
    assert len(TUTORIALS) >= 2
    for p in TUTORIALS:
        text = p.read_text()
        assert text.startswith("# %% [markdown]"), f"{p.name} is not a jupytext percent script"
        assert "import autogradlens" in text, f"{p.name} must import the library, not redefine it"


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
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "MPLBACKEND": "Agg"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "NllLossBackward0" in r.stdout
