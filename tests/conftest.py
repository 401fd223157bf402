import atexit
import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # pytest-xdist's controller runs no test: it need not start torch
    import matplotlib
    import torch

    matplotlib.use("Agg")
    if hasattr(config, "workerinput"):
        # pytest-xdist runs one worker per core: torch's own threads (and those of the notebook kernels and CLI
        # subprocesses the tests start) would oversubscribe the cores and spin against each other
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
        # a worker's exit waited 2-4 s for the garbage collector's last passes over torch's objects (and those
        # the tests made): leave them to the OS. Runs after pytest's own exit work (atexit is last in, first out).
        atexit.register(gc.freeze)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def no_dot(monkeypatch):
    """Simulate a machine without Graphviz's `dot` binary."""
    import autogradlens._deps as deps
    monkeypatch.setattr(deps.shutil, "which", lambda name, *a, **k: None if name == "dot" else "/bin/" + name)
    monkeypatch.setattr(deps, "_warned", False)


# The longest files first (with --no-loadscope-reorder, in pyproject.toml), so pytest-xdist (one file per worker
# at a time) starts them early instead of leaving one of them running alone at the end.
_FIRST = ("test_watch_observe.py", "test_tutorials.py", "test_mirror.py", "test_zoo.py", "test_verdicts.py",
          "test_cli.py", "test_demo.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(_FIRST)))


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the worker's picture tests; a test that needs it fails, saying how to get one,
    when none can be found (a picture test never passes by not looking)."""
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        pytest.fail("the browser tests drive Chromium with Playwright: pip install -e '.[dev]' (make setup does)")
    import browser as b

    try:
        return b.shared()
    except RuntimeError as e:
        pytest.fail(str(e))
