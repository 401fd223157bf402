import os
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
sys.path.insert(0, os.path.dirname(__file__))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: torch's own threads (and those of the notebook kernels and CLI
    # subprocesses the tests start) would oversubscribe the cores and spin against each other
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_dot(monkeypatch):
    """Simulate a machine without Graphviz's `dot` binary."""
    import autogradlens._deps as deps
    monkeypatch.setattr(deps.shutil, "which", lambda name, *a, **k: None if name == "dot" else "/bin/" + name)
    monkeypatch.setattr(deps, "_warned", False)
