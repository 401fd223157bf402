import doctest
import importlib
import pkgutil

import pytest

import autogradlens as lens


def test_all_is_sorted_flat_and_importable():
    assert lens.__all__ == sorted(lens.__all__)
    for name in lens.__all__:
        assert hasattr(lens, name)
    assert {"trace", "Trace", "mirror", "MirrorReport", "Value", "watch", "Watch", "diff", "GraphDiff", "data"} <= \
        set(lens.__all__)
    assert callable(lens.data.digits) and callable(lens.data.mnist)  # DESIGN: lens.data.digits()


MODULES = [m.name for m in pkgutil.iter_modules(lens.__path__, "autogradlens.") if m.name != "autogradlens.__main__"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0
