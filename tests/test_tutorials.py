"""Every tutorial runs as a notebook (jupytext -> nbclient, a real kernel) and shows at least one picture."""

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
README = ROOT / "README.md"
PICTURES = ("image/svg+xml", "image/png")
KERNELSPEC = re.compile(r"^# ---\n# jupyter:\n(#  .*\n)*#   kernelspec:\n(#  .*\n)*#     name: python3\n", re.M)


def test_tutorials_exist_and_are_numbered():
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, len(TUTORIALS) + 1)]
    assert len(TUTORIALS) >= 16
    for p in TUTORIALS:
        text = p.read_text()
        assert KERNELSPEC.match(text), f"{p.name}: start with a jupytext header naming the python3 kernelspec"
        assert "# %% [markdown]" in text.split("\n# %%\n")[0], f"{p.name} is not a jupytext percent script"
        assert re.search(r"^(import|from) autogradlens", text, re.M), f"{p.name} must import the library"
        assert "class Value" not in text and "def trace" not in text, f"{p.name} must not redefine the library"
        assert "AUTOGRADLENS_" not in text, f"{p.name}: no hidden environment switches"


def _kernel_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's own (inline) backend
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH")) if x)
    return env


def _readme_code() -> str:
    """The README's quick example, and a mirror of its loss (the README shows both outputs)."""
    code = README.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    return code + "\nprint(lens.mirror(loss, params=model).to_text())\n"


def _notebook(path):
    import jupytext
    import nbformat

    if path == README:  # pasted into a notebook cell as a user would
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(_readme_code())])
    return jupytext.read(path)


def _run_group(paths: list, tmp_path_factory) -> dict:
    """Run notebooks one after the other in one kernel and one client session (started once: torch imports once,
    and each new session waits 0.2 s for the kernel's output to settle), each from a clean namespace (%reset)
    in its own folder."""
    import nbclient
    import nbformat
    from jupyter_client.manager import KernelManager

    out = {}
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=_kernel_env(), cwd=str(tmp_path_factory.mktemp("kernel")))
    try:
        client = nbclient.NotebookClient(nbformat.v4.new_notebook(), km=km, timeout=240, allow_errors=False)

        def run(source):  # a cell of our own, in a notebook of its own
            client.nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
            client.execute_cell(client.nb.cells[0], 0)

        with client.setup_kernel():
            # what every tutorial loads (torch, its optimizers' dynamo and sympy, matplotlib, scikit-learn) loaded
            # once and frozen out of the garbage collector's scans: each %reset collects, and scanning those
            # objects took 0.1-0.4 s a tutorial
            run(
                "import gc, autogradlens.plots, matplotlib.pyplot, sklearn.datasets, torch, tqdm.auto\n"
                "[getattr(autogradlens, name) for name in autogradlens.__all__]\n"
                "torch.optim.SGD([torch.zeros(1, requires_grad=True)]).step()\n"
                "gc.collect()\ngc.freeze()")
            for path in paths:
                try:
                    work = tmp_path_factory.mktemp(path.stem)
                    run(f"%reset -f\nimport os\nos.chdir({str(work)!r})")
                    nb = client.nb = _notebook(path)
                    nb.metadata["workdir"] = str(work)
                    for index, cell in enumerate(nb.cells):
                        client.execute_cell(cell, index)
                    out[path.name] = nb
                except Exception as e:  # reported by the test of that tutorial
                    out[path.name] = e
    finally:
        km.shutdown_kernel(now=True)
    return out


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    """Run all tutorials as notebooks in a few kernels side by side (kernel start-up dominates small ones)."""
    pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (nbclient, ipykernel)")
    pytest.importorskip("ipykernel", reason="pip install -e '.[dev]' (nbclient, ipykernel)")
    # under pytest-xdist the other cores run other tests: one kernel; alone, a few side by side
    workers = 1 if os.environ.get("PYTEST_XDIST_WORKER") else max(2, min(3, os.cpu_count() or 2))
    paths = [*TUTORIALS, README]
    groups = [paths[i::workers] for i in range(workers)]
    out = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(lambda g: _run_group(g, tmp_path_factory), groups):
            out.update(part)
    return out


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _pictures(nb) -> list[str]:
    """The picture mime types a notebook's outputs show (text/html counts when it holds an SVG or a table)."""
    kinds = []
    for o in _outputs(nb):
        data = o.get("data", {})
        kinds += [k for k in PICTURES if k in data]
        html = data.get("text/html", "")
        if "<svg" in html or "<table" in html:
            kinds.append("text/html")
    return kinds


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs_as_a_notebook_and_shows_a_picture(path, notebooks):
    nb = notebooks[path.name]
    if isinstance(nb, Exception):
        raise nb
    assert _pictures(nb), f"{path.name}: no cell ends on a picture (a Trace, Value graph, report or figure)"
    text = "".join(o.get("text", "") for o in _outputs(nb) if o.get("output_type") == "stream")
    assert text.strip() or len(_pictures(nb)) > 1, "a tutorial prints real numbers or shows several pictures"
    assert "IProgress not found" not in text, "no tqdm widget warning in notebooks"


EXPECTED = {  # tutorial -> a picture it must show, and a text that proves it is the right one
    "01_what_is_grad_fn.py": ("image/svg+xml", "TanhBackward0:0"),
    "03_micrograd_meets_pytorch.py": ("image/svg+xml", "data 0.7071"),
    "04_mirror_an_mlp.py": ("text/html", "<table"),
    "07_grad_accumulation.py": ("image/png", ""),
    "09_graph_diff.py": ("text/html", "<svg"),
    "10_backprop_ninja.py": ("text/html", "first wrong: counts"),
    "12_value_pictures.py": ("image/svg+xml", "grad 6.0000"),
    "13_nn_parameter.py": ("image/svg+xml", "param:w"),
    "14_edges.py": ("image/svg+xml", "SplitBackward0:0"),
    "15_retain_grad.py": ("image/svg+xml", "grad"),
    "16_why_normalisation.py": ("image/png", ""),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_right_picture(name, notebooks):
    nb = notebooks[name]
    if isinstance(nb, Exception):
        raise nb
    kind, needle = EXPECTED[name]
    shown = [o["data"][kind] for o in _outputs(nb) if kind in o.get("data", {})]
    assert shown and any(needle in s for s in shown), f"{name}: no {kind} output with {needle!r}"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_every_tutorial_picture_fits_a_notebook_column(path, notebooks, browser):
    """Each picture a tutorial shows, as JupyterLab shows it at a 1280×900 window (848 px column), in Chromium:
    nothing sideways, no PNG shrunk, nearly all text at 8 px or more."""
    from browser import problems

    nb = notebooks[path.name]
    if isinstance(nb, Exception):
        raise nb
    shown = 0
    for o in _outputs(nb):
        data = o.get("data", {})
        if not any(k in data for k in (*PICTURES, "text/html")):
            continue
        m = browser.notebook(dict(data))
        shown += bool(m["pics"])
        assert not problems(m), f"{path.name}: {m.summary()}: {problems(m)}"
    assert shown


def test_tutorials_teach_what_they_say_and_carry_no_lint_comments(notebooks):
    for p in TUTORIALS:
        assert "noqa" not in p.read_text() and "type: ignore" not in p.read_text(), p.name
    nb = notebooks["07_grad_accumulation.py"]
    if isinstance(nb, Exception):
        raise nb
    text = "".join(o.get("text", "") for o in _outputs(nb) if o.get("output_type") == "stream")
    assert "accumulated=True" in text and "accumulated=False" in text  # the point of the tutorial, printed


def test_readme_quick_example_runs(notebooks):
    nb = notebooks[README.name]
    if isinstance(nb, Exception):
        raise nb
    stdout = "".join(o["text"] for o in _outputs(nb) if o.get("name") == "stdout")
    assert (Path(nb.metadata["workdir"]) / "graph.svg").exists()
    readme = README.read_text()
    blocks = readme.split("```text\n")
    shown_trace, shown_mirror = blocks[1].split("```")[0], blocks[2].split("```")[0]
    assert stdout.startswith(shown_trace), "the README shows the real output of its example"

    def columns(text):  # name and verdict; the last digits of maxdiff depend on the CPU's BLAS
        return [(line.split("|")[0].strip(), line.split("|")[2].strip()) for line in text.splitlines() if "|" in line]

    assert columns(stdout[len(shown_trace):]) == columns(shown_mirror)
