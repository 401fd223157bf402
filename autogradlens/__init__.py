"""autogradlens: make PyTorch's autograd visible and checkable.

    import autogradlens as lens
    t = lens.trace(loss, params=model)      # the real autograd graph, as a networkx graph
    r = lens.mirror(loss, params=model)     # a micrograd-style Value re-derives every gradient
    c = lens.check(loss, {"h": dh}, params=names)  # grade your own backprop, line by line
    with lens.watch(model, optimizer=opt) as w: ...   # hooks while training
    d = lens.diff(t_a, t_b)                 # two graphs side by side
    with lens.modules(model): loss = ...    # record which module made each node (pictures group by module)
    lens.data.digits()                      # scikit-learn's 8x8 digits (offline); lens.data.mnist(path)

Names load on first use (``import autogradlens`` and ``autogradlens --help`` do not start torch; ``lens.Value``
needs only numpy).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from .errors import LensError

__version__ = "0.1.0"

__all__ = ["CheckReport", "Event", "GraphDiff", "LensError", "MirrorReport", "Trace", "Value", "Watch", "__version__",
           "check", "data", "diff", "mirror", "modules", "trace", "watch"]

# public name -> the module defining it (None: the name is a module of its own)
_WHERE = {"CheckReport": "checking", "Event": "watching", "GraphDiff": "diffing", "MirrorReport": "mirror",
          "Trace": "tracing", "Value": "value", "Watch": "watching", "check": "checking", "data": None,
          "diff": "diffing", "mirror": None, "modules": "attribution", "trace": "tracing", "watch": "watching"}

if TYPE_CHECKING:  # what static tools and IDEs see
    from . import data, mirror
    from .attribution import modules
    from .diffing import GraphDiff, diff
    from .mirror import MirrorReport
    from .tracing import Trace, trace
    from .value import Value
    from .watching import Event, Watch, watch


def __getattr__(name: str):
    if name not in _WHERE:  # a submodule (autogradlens.watching.EVENTS) loads on first use too
        # never a dunder: `hasattr(autogradlens, "__main__")` (doc tools, IDEs) must not run the command line
        if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'autogradlens' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    mod = importlib.import_module(f".{_WHERE[name] or name}", __name__)
    value = mod if _WHERE[name] is None else getattr(mod, name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
