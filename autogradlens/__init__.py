"""autogradlens: make PyTorch's autograd visible and checkable.

    import autogradlens as lens
    t = lens.trace(loss, params=model)      # the real autograd graph, as a networkx graph
    r = lens.mirror(loss, params=model)     # a micrograd-style Value re-derives every gradient
    with lens.watch(model, optimizer=opt) as w: ...   # hooks while training
    d = lens.diff(t_a, t_b)                 # two graphs side by side
    with lens.modules(model): loss = ...    # record which module made each node (pictures group by module)
    lens.data.digits()                      # scikit-learn's 8x8 digits (offline); lens.data.mnist(path)
"""

from . import data
from .attribution import modules
from .diffing import GraphDiff, diff
from .errors import LensError
from .mirroring import MirrorReport, mirror
from .tracing import Trace, trace
from .value import Value
from .watching import Event, Watch, watch

__version__ = "0.1.0"

__all__ = ["Event", "GraphDiff", "LensError", "MirrorReport", "Trace", "Value", "Watch", "__version__", "data",
           "diff", "mirror", "modules", "trace", "watch"]
