import doctest
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import autogradlens as lens


def test_all_is_sorted_flat_and_importable():
    assert lens.__all__ == sorted(lens.__all__)
    for name in lens.__all__:
        assert hasattr(lens, name)
    assert {"trace", "Trace", "mirror", "MirrorReport", "Value", "watch", "Watch", "diff", "GraphDiff", "data"} <= \
        set(lens.__all__)
    assert callable(lens.data.digits) and callable(lens.data.mnist)  # DESIGN: lens.data.digits()


MODULES = [m.name for m in pkgutil.walk_packages(lens.__path__, "autogradlens.") if m.name != "autogradlens.__main__"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0


def test_import_help_and_value_do_not_start_torch():
    """`import autogradlens`, `autogradlens --help` and scalar Values need no torch (names load on first use)."""
    code = ("import sys, autogradlens as lens\n"
            "from autogradlens.cli import build_parser\n"
            "assert build_parser().format_help() and (lens.Value(2.0) * 3).data == 6.0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0, r.stderr


def test_names_and_submodules_load_on_first_use(monkeypatch):
    import autogradlens.plots
    import autogradlens.watching

    for name in ("watching", "plots", "Trace"):  # as before their first use
        monkeypatch.delattr(lens, name, raising=False)
    assert "pack" in lens.watching.EVENTS and lens.plots is autogradlens.plots
    assert lens.Trace is autogradlens.tracing.Trace and "Trace" in vars(lens)  # then a plain attribute
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lens.nope  # noqa: B018
    assert not hasattr(lens, "tracer") and "trace" in dir(lens)


def test_modules_are_not_shadowed_by_the_functions_they_export():
    import autogradlens.diffing
    import autogradlens.mirror
    import autogradlens.tracing
    import autogradlens.watching

    assert autogradlens.tracing.Trace is lens.Trace and autogradlens.mirror.MirrorReport is lens.MirrorReport
    assert autogradlens.watching.Watch is lens.Watch and autogradlens.diffing.GraphDiff is lens.GraphDiff
    assert callable(lens.trace) and callable(lens.mirror) and callable(lens.watch) and callable(lens.diff)
    assert lens.LensError is importlib.import_module("autogradlens.errors").LensError


def _entries():
    from autogradlens import data, training
    return {"trace": lens.trace, "mirror": lens.mirror, "watch": lens.watch, "diff": lens.diff,
            "Trace.from_json": lens.Trace.from_json, "Trace.render": lens.Trace.render, "data.digits": data.digits,
            "data.mnist": data.mnist, "data.read_idx": data.read_idx, "training.fit": training.fit,
            "training.make_optimizer": training.make_optimizer}


@pytest.mark.parametrize("name", sorted(_entries()))
def test_public_entries_say_what_they_raise(name):
    doc = _entries()[name].__doc__ or ""
    assert "Raises:" in doc and "Lens" in doc.split("Raises:")[1], f"{name}: docstring lists no Lens error it raises"


def test_looking_for_main_does_not_run_the_command_line():
    """Doc tools and IDEs ask ``hasattr(package, "__main__")``: that must answer False, not run the CLI and exit."""
    code = ("import autogradlens as lens\n"
            "print(hasattr(lens, '__main__'), hasattr(lens, '__wrapped__'), hasattr(lens, '_files'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0 and r.stdout.split() == ["False", "False", "True"], (r.returncode, r.stdout, r.stderr)
