import os
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_dot(monkeypatch):
    """Simulate a machine without Graphviz's `dot` binary."""
    import autogradlens._deps as deps
    monkeypatch.setattr(deps.shutil, "which", lambda name, *a, **k: None if name == "dot" else "/bin/" + name)
    monkeypatch.setattr(deps, "_warned", False)
