import json
import subprocess
import sys

import pytest

from autogradlens import cli

TARGET = """
import torch
def loss():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    return (w.tanh() * 3).sum(), {"w": w}
def not_a_tensor():
    return 42
def no_graph():
    return torch.ones(2)
"""


@pytest.fixture
def target(tmp_path):
    p = tmp_path / "prog.py"
    p.write_text(TARGET)
    return p


def test_trace_file_target_to_json_and_text(target, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert cli.main(["trace", f"{target}:loss", "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["root"] == "SumBackward0:0" and any(n["id"] == "param:w" for n in doc["nodes"])
    assert cli.main(["trace", str(out)]) == 0  # a saved trace is a target too
    assert "TanhBackward0:0" in capsys.readouterr().out


def test_trace_module_target(capsys):
    assert cli.main(["trace", "autogradlens.examples:neuron"]) == 0
    assert "TanhBackward0:0" in capsys.readouterr().out
    assert cli.main(["trace", "autogradlens.examples:mlp_loss"]) == 0  # returns (loss, model)
    assert "param:net.0.weight" in capsys.readouterr().out


@pytest.mark.parametrize("spec,msg", [
    ("missing.py:loss", "file not found"),
    ("{target}:nope", "has no function 'nope'"),
    ("{target}:not_a_tensor", "must return a tensor with a graph"),
    ("{target}:no_graph", "without grad_fn"),
    ("no.such.module:f", "cannot import module"),
    ("justaword", "bad target"),
    ("missing.json", "trace file not found"),
])
def test_bad_targets_say_what_is_wrong(spec, msg, target, capsys):
    assert cli.main(["trace", spec.format(target=target)]) == 2
    assert msg in capsys.readouterr().err


def test_python_dash_m_runs():
    r = subprocess.run([sys.executable, "-m", "autogradlens", "trace", "autogradlens.examples:lecture_expression"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "DivBackward0" in r.stdout
