import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autogradlens import cli

TARGET = """
import torch
def loss():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    return (w.tanh() * 3).sum(), {"w": w}
def not_a_tensor():
    return 42
def nothing():
    return None
def two_tensors():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    return (w * 2).sum(), w
def bad_params():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    return (w * 2).sum(), 5
def no_graph():
    return torch.ones(2)
def needs_args(batch):
    return None
def fails():
    return 1 / 0
def long_chain():
    x = torch.randn(2, requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.0001
    return y.sum()
"""
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def target(tmp_path):
    p = tmp_path / "prog.py"
    p.write_text(TARGET)
    return p


def run_cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "autogradlens", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, **kw)


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


RETURNS = re.escape("must return a tensor with a graph (the loss) or (loss, params)")


@pytest.mark.parametrize("spec,msg", [
    ("missing.py:loss", "file not found"),
    ("{target}:nope", "has no function 'nope'"),
    ("{target}:not_a_tensor", RETURNS + ".*it returned int 42"),
    ("{target}:nothing", RETURNS + ".*it returned None"),
    ("{target}:two_tensors", RETURNS + r".*it returned \(Tensor, Tensor\)"),
    ("{target}:bad_params", RETURNS + r".*it returned \(Tensor, int\)"),
    ("{target}:no_graph", RETURNS + ".*a tensor without grad_fn"),
    ("{target}:needs_args", r"takes arguments \(batch\)"),
    ("no.such.module:f", "cannot import module"),
    ("justaword", "bad target"),
    ("missing.json", "trace file not found"),
])
def test_bad_targets_say_what_is_wrong(spec, msg, target, capsys):
    assert cli.main(["trace", spec.format(target=target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autogradlens: error: ") and "Traceback" not in err
    assert re.search(msg, err), err


def test_a_failing_target_shows_its_own_traceback_then_one_error_line(target, capsys):
    assert cli.main(["trace", f"{target}:fails"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "return 1 / 0" in err and "cli.py" not in err
    assert err.strip().splitlines()[-1].startswith("autogradlens: error: calling")
    assert "raised ZeroDivisionError" in err


def test_output_suffix_and_folder_are_checked(target, tmp_path, capsys):
    assert cli.main(["trace", f"{target}:loss", "-o", str(tmp_path / "g.xyz")]) == 2
    assert "trace -o writes .svg" in capsys.readouterr().err
    assert cli.main(["diff", f"{target}:loss", f"{target}:loss", "-o", str(tmp_path / "d.json")]) == 2
    assert "diff -o writes .html" in capsys.readouterr().err
    assert cli.main(["trace", f"{target}:loss", "-o", str(tmp_path / "no" / "g.txt")]) == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_mirror_of_a_saved_trace_is_refused(target, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert cli.main(["trace", f"{target}:loss", "-o", str(out)]) == 0
    assert cli.main(["mirror", str(out)]) == 2
    assert "mirror needs a live graph" in capsys.readouterr().err


def test_help_shows_defaults_and_target_examples(capsys):
    for argv, needles in [(["--help"], ["autogradlens demo --out out", "autogradlens.examples:mlp_loss",
                                        "file.py:function", "diff a.json b.json"]),
                          (["demo", "--help"], ["(default: out)", "(default: digits)", "(default: 30)"]),
                          (["trace", "--help"], ["TARGET", "file.py:function", "autogradlens.examples:mlp_loss"]),
                          (["mirror", "--help"], ["TARGET", "(default: auto)", "autogradlens.examples:mlp_loss"]),
                          (["diff", "--help"], ["A ", "B ", "a.json"])]:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        for n in needles:
            assert n in out, (argv, n, out)


@pytest.mark.parametrize("epochs,msg", [("0", "must be at least 1"), ("-1", "must be at least 1"),
                                        ("two", "must be a whole number")])
def test_demo_epochs_below_one_are_refused(epochs, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--epochs", epochs])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_alone_lists_the_commands_with_examples():
    r = run_cli()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for line in ("demo ", "trace ", "mirror ", "diff ", "autogradlens trace autogradlens.examples:mlp_loss",
                 "autogradlens mirror autogradlens.examples:mlp_loss", "autogradlens demo --out out"):
        assert line in r.stderr, r.stderr


def test_the_installed_command_is_the_cli():
    """pyproject's `autogradlens` script is cli.run (main, then exit), and the installed command answers."""
    import tomllib

    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["autogradlens"]
    module, func = entry.split(":")
    assert getattr(importlib.import_module(module), func) is cli.run
    r = subprocess.run([str(Path(sys.executable).with_name("autogradlens")), "trace", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "TARGET" in r.stdout and "autogradlens.examples:mlp_loss" in r.stdout, r.stderr


def test_broken_pipe_ends_quietly(target):
    """`autogradlens trace ... | head -1`: the reader goes away after one line of a 6,000-node tree (and
    `python -m autogradlens trace` runs: the first line is the graph's root)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "autogradlens", "trace", f"{target}:long_chain"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141
    assert first.startswith("SumBackward0:0")
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def _deep(n):
    return '{"schema": "autogradlens.trace/1", "root": "A", "nodes": ' + "[" * n + "]" * n + ', "edges": []}'


def test_damaged_trace_files_give_one_error_line(target, tmp_path, capsys):
    good = tmp_path / "good.json"
    assert cli.main(["trace", f"{target}:loss", "-o", str(good)]) == 0
    doc = json.loads(good.read_text())

    def edited(f):
        d = json.loads(json.dumps(doc))
        f(d)
        return json.dumps(d)

    cases = {
        "missing nodes": (edited(lambda d: d.pop("nodes")), "missing key 'nodes'"),
        "node without id": (edited(lambda d: d["nodes"][0].pop("id")), "nodes[0]: missing key 'id'"),
        "nodes 5": (edited(lambda d: d.update(nodes=5)), "nodes: expected a list, got int"),
        "deep nesting": (_deep(100_000), "nested too deeply"),
        "dangling root": (edited(lambda d: d.update(root="Nope:0")), "root: 'Nope:0' is not a node"),
        "dangling edge": (edited(lambda d: d["edges"][0].update(v="Nope:1")), "edges[0].v: 'Nope:1' is not a node"),
        "not JSON": ("{nope", "not a trace JSON document"),
        "empty file": ("", "the text is empty"),
        "binary garbage": (bytes(range(256)) * 16, "not UTF-8"),
    }
    procs, results = {}, {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for i, (name, (text, _)) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.json"
        bad.write_bytes(text if isinstance(text, bytes) else text.encode())
        cmd = ["diff", str(bad), str(good)] if i % 2 else ["trace", str(bad)]  # both readers of trace files
        # as a user runs it, a process of its own (a damaged file is refused before torch starts: 0.2 s each)
        procs[name] = subprocess.Popen([sys.executable, "-m", "autogradlens", *cmd], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        capsys.readouterr()
        second = (cli.main(["diff", str(good), str(bad)]), capsys.readouterr().err)  # diff's second argument too
        assert second[0] == 2 and cases[name][1] in second[1], (name, second)
    for name, p in procs.items():
        err = p.communicate(timeout=300)[1]
        results[name] = (p.returncode, err)
    assert len(results) == len(cases)
    for name, (rc, err) in results.items():
        assert rc == 2, (name, err)
        assert err.startswith("autogradlens: error: ") and err.count("\n") == 1, (name, err)
        assert "Traceback" not in err and cases[name][1] in err, (name, err)


CHECK_TARGET = """
import torch
def learner(sign=1.0):
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    h = x * x
    loss = h.sum()
    dh = torch.ones(3)
    return loss, {"h": dh, "x": sign * 2 * x.detach() * dh}, {"x": x, "h": h}
def wrong():
    return learner(-1.0)
def two():
    loss, grads, params = learner()
    return loss, {k: (params[k], v) for k, v in grads.items()}
def not_grads():
    return learner()[0], 3
"""


def test_check_grades_the_learners_gradients_with_exit_codes(tmp_path, capsys):
    p = tmp_path / "mine.py"
    p.write_text(CHECK_TARGET)
    assert cli.main(["check", f"{p}:learner"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("name | exact | approximate") and "all right" in out
    assert cli.main(["check", f"{p}:two", "-o", str(tmp_path / "c.txt")]) == 0
    assert "all right" in (tmp_path / "c.txt").read_text()
    assert cli.main(["check", f"{p}:wrong"]) == 1
    out = capsys.readouterr().out
    assert "first wrong: x" in out and "wrong sign" in out
    assert cli.main(["check", f"{p}:not_grads"]) == 2
    assert "must return (loss, grads)" in capsys.readouterr().err
    assert cli.main(["check", f"{p}:learner", "-o", str(tmp_path / "c.json")]) == 2
    assert cli.main(["check", "x.json"]) == 2
    assert cli.main(["check", "autogradlens.examples:makemore_exercise_with_a_bug"]) == 1
    assert "first wrong: counts" in capsys.readouterr().out
