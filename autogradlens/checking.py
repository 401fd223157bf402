"""`lens.check`: grade the learner's own backward pass, line by line, against PyTorch; find the first wrong line
and say why.

Three gradients per named tensor x, all computed by PyTorch's own nodes (`engine.run`, which changes nothing):

- T(x): PyTorch's gradient (read from ``x.grad`` after ``loss.backward()``, or computed when the graph is alive);
- L(x): the learner's line;
- C(x): the correct local step applied to the learner's own upstream gradients: the engine run again with the
  learner's gradient put in place of PyTorch's at every named tensor (teacher forcing). Each line is then
  judged on its own: L(x) equal to C(x) but not to T(x) means the line is right and an earlier one is wrong
  (``inherits``); L(x) far from C(x) means this line is wrong.

After ``backward()`` has freed the graph, nodes that saved tensors cannot run again: C(x) is then known only where
the path from the learner's upstream gradients to x needs no saved tensor (sums, views, additions), and a line
that disagrees is ``wrong`` when every gradient it was computed from is right, else ``unknown`` (with what to
do to know more).

Verdicts. ``exact``: bitwise equal to PyTorch's (as the lecture's ``cmp``). ``approximate``: within a bound on the
rounding error of computing it, NOTE [bound] of the mirror applied to the learner's lines: with M(x) the
magnitudes of the terms summed from the upstream named gradients to x (the mirror's rules run on magnitudes),
B(x) = gamma_n(u) M(x) per computation (PyTorch's and the learner's), and P(x) the admissible part of the
upstream differences carried to x exactly (by linearity, through PyTorch's own nodes), a correct line differs
from PyTorch's by at most |P(x)| + 3 B(x). After backward, where magnitudes need freed saved tensors, M(x) is
estimated as |L(x)| + |T(x)| plus the magnitudes that could be computed (a note says so); that is no bound (a
line that cancels rounds by more), so a difference beyond it but within the same roundings of the line's largest
values is ``unknown``, not ``wrong``.

Diagnoses of a wrong line compare L(x) with the reference R(x) (C(x) where known, else T(x)): ``broadcast``,
``transpose``, ``sign``, ``one_path`` (the sum over some but not all uses), ``scale`` (a constant factor),
``local_only`` (Values: the local derivative without the outer gradient).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np
import torch

from . import engine
from .errors import LensTypeError, LensValueError
from .render import COLUMN, Drawable, trace_spec
from .tracing import Trace, traced

__all__ = ["CheckReport", "check"]

STATUSES = ("right", "wrong", "inherits", "unknown")
COLORS = {"right": "#a8e6a3", "wrong": "#f4a6a6", "inherits": "#fde2a7", "unknown": "#e5e5e5"}
_U = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
_MAX_SUBSETS = 6  # one_path tries every subset of at most this many uses


# ----------------------------------------------------------------------------- the report

class CheckReport(Drawable):
    """The learner's gradients graded line by line: ``ok``, ``first_wrong`` (a name or None), ``rows``.

    Each row (in backward order) is a dict: ``name``, ``shape`` (the tensor's), ``exact`` (bitwise equal to
    PyTorch's gradient), ``approximate`` (within the rounding bound), ``maxdiff`` (largest |learner - PyTorch|),
    ``status`` (``right`` / ``wrong`` / ``inherits`` / ``unknown``), ``diagnosis`` (``broadcast``, ``one_path``,
    ``scale``, ``sign``, ``transpose``, ``local_only`` or None), ``factor`` (for ``scale``), ``hint`` (one
    sentence: what to change, or what can be told), ``bound`` (the largest allowed difference) and ``id`` (the
    node in ``trace``). ``alive`` says whether the graph could be run again (each line judged on its own).

    Example:
        >>> import torch, autogradlens as lens
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> y = x * x
        >>> loss = y.sum()
        >>> r = lens.check(loss, {"y": torch.ones(2), "x": x.detach()}, params={"x": x, "y": y})  # one use of x of two
        >>> r.first_wrong, r.rows[-1]["diagnosis"], r.counts()
        ('x', 'one_path', {'right': 1, 'wrong': 1, 'inherits': 0, 'unknown': 0})
    """

    _what = "a check report"

    def __init__(self, rows: list, trace: Trace, alive: bool, notes: list | None = None):
        self.rows, self.trace, self.alive, self.notes = rows, trace, alive, notes or []

    @property
    def ok(self) -> bool:
        return all(r["status"] == "right" for r in self.rows)

    @property
    def first_wrong(self) -> str | None:
        return next((r["name"] for r in self.rows if r["status"] == "wrong"), None)

    def counts(self) -> dict:
        """How many rows have each status: ``{"right": .., "wrong": .., "inherits": .., "unknown": ..}``."""
        return {s: sum(r["status"] == s for r in self.rows) for s in STATUSES}

    def to_text(self) -> str:
        """The lecture's ``cmp`` table, one line per gradient in backward order, with status and hint."""
        w = max([len(r["name"]) for r in self.rows] + [4])
        head = f"{'name':{w}s} | exact | approximate | maxdiff  | status   | hint"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            approx = "n/a" if r["approximate"] is None else str(r["approximate"])
            md = "n/a" if r["maxdiff"] is None else f"{r['maxdiff']:.1e}"
            lines.append(f"{r['name']:{w}s} | {str(r['exact']):5s} | {approx:11s} | {md:8s} | {r['status']:8s} | "
                         f"{r['hint'] or ''}".rstrip())
        c = self.counts()
        first = self.first_wrong
        lines.append(("all right" if self.ok else f"first wrong: {first}" if first else "not all right") +
                     f" ({c['right']} right, {c['wrong']} wrong, {c['inherits']} inherit, {c['unknown']} unknown; "
                     + ("each line judged on its own" if self.alive else "after backward(): the graph is freed")
                     + ")")
        lines += self.notes
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        c = self.counts()
        return (f"<CheckReport {'all right' if self.ok else 'first wrong: ' + str(self.first_wrong)}: "
                f"{c['right']} right, {c['wrong']} wrong, {c['inherits']} inherit, {c['unknown']} unknown>")

    def colors(self) -> dict:
        """Node id -> fill colour of its status, as the picture draws it (``COLORS``)."""
        return {r["id"]: COLORS[r["status"]] for r in self.rows}

    def _spec(self, **opts) -> dict:
        """The traced graph with the learner's names, coloured by status; the first wrong line marked."""
        first = next((r["id"] for r in self.rows if r["status"] == "wrong"), None)
        opts = {"colors": self.colors(), "legend": [(s, COLORS[s], "box") for s in STATUSES],
                "mark": {first: "first wrong"} if first is not None else None,
                "names": {r["id"]: r["name"] for r in self.rows}, **opts}
        return trace_spec(self.trace, **opts)

    def _text_formats(self, **opts) -> dict:
        return {"txt": lambda: self.to_text() + "\n"}

    def _repr_html_(self) -> str:
        from . import report
        return (f"<p><b>{report.esc(repr(self))}</b></p>{report.pre(self.to_text())}"
                + report.svg(self.to_svg(width=COLUMN)))


def _row(name, nid, shape, exact, approx, maxdiff, status, diagnosis=None, factor=None, hint=None, bound=None):
    return {"name": name, "id": nid, "shape": tuple(shape), "exact": exact, "approximate": approx,
            "maxdiff": maxdiff, "status": status, "diagnosis": diagnosis, "factor": factor, "hint": hint,
            "bound": bound}


# ----------------------------------------------------------------------------- entry point

def check(root, grads=None, *, params=None) -> CheckReport:
    """Grade the learner's own gradients against PyTorch's, line by line, and find the first wrong one.

    Tensor graphs: `grads` maps names to the learner's gradients (``{"logprobs": dlogprobs, ...}``), each name
    resolved through `params` as in :func:`lens.trace` (parameters and intermediate tensors), or to
    ``(tensor, gradient)`` pairs, as the lecture's ``cmp(name, dt, t)`` takes them. Call it after
    ``loss.backward()`` with ``retain_grad()`` on the intermediates (the lecture's order: PyTorch's gradients are
    read from ``.grad``) or before any backward (they are computed; with the graph alive every line is judged on
    its own). No ``.grad`` changes.

    Value graphs (``lens.Value`` or karpathy's micrograd ``Value``): ``lens.check(o)`` compares each value's
    hand-set ``.grad`` (rows named by ``label``) with the true gradient of `o`.

    A gradient of the wrong shape is a verdict (``broadcast`` or ``transpose``), never an exception.

    Raises:
        LensValueError: no gradients given, a name that is not in `params` or not in the graph, a tensor that
            does not require grad, `grads` given for a Value root.
        LensTypeError: a gradient that is not a tensor, or of another dtype or device than its tensor.

    Example:
        >>> import torch, autogradlens as lens
        >>> x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
        >>> h = x * x
        >>> loss = h.sum()
        >>> dh = torch.ones(3)
        >>> dx = 2 * x.detach() * dh
        >>> r = lens.check(loss, {"h": (h, dh), "x": (x, -dx)})
        >>> r.first_wrong, r.rows[1]["diagnosis"], x.grad is None
        ('x', 'sign', True)
    """
    first = root[0] if isinstance(root, (list, tuple)) and root else root
    from .valuegraph import is_value
    if is_value(first):
        if grads is not None or params is not None:
            raise LensValueError("grads= and params= are for tensor graphs: for Values, set each value's .grad by "
                                 "hand (or run your own backward) and call lens.check(o)")
        from .valuecheck import check_values
        return check_values(root)
    return _check_tensors(root, grads, params)


def _entries(grads, params) -> tuple[list, list]:
    """(name, tensor, learner's gradient) per graded name, and the (name, tensor) pairs to trace with."""
    from .tracing import _named
    if grads is None or (isinstance(grads, Mapping) and not grads):
        raise LensValueError("nothing to check: pass grads={'name': dname, ...} with params naming the tensors, or "
                             "grads={'name': (tensor, dname), ...}")
    if not isinstance(grads, Mapping):
        raise LensTypeError(f"grads must be a mapping name -> gradient (or -> (tensor, gradient)), got "
                            f"{type(grads).__name__}")
    pairs = _named(params)
    known = dict(pairs)
    out = []
    for name, v in grads.items():
        name = str(name)
        if isinstance(v, (tuple, list)) and len(v) == 2:
            t, g = v
            if not isinstance(t, torch.Tensor):
                raise LensTypeError(f"grads[{name!r}] = (tensor, gradient): the tensor is a {type(t).__name__}")
            if name in known and known[name] is not t:
                raise LensValueError(f"params names another tensor {name!r} than grads[{name!r}]: give each tensor "
                                     "its own name")
            if name not in known:
                pairs.append((name, t))
                known[name] = t
        else:
            if name not in known:
                hint = (f"pass params={{{name!r}: {name}, ...}} (or an nn.Module naming it), or grads={{{name!r}: "
                        f"({name}, d{name})}}")
                raise LensValueError(f"grads names {name!r}, which params does not name: {hint}")
            t, g = known[name], v
        if not isinstance(g, torch.Tensor):
            raise LensTypeError(f"the gradient for {name!r} is a {type(g).__name__}: pass a tensor (d{name})")
        if not t.requires_grad:
            raise LensValueError(f"{name!r} does not require grad, so it has no gradient to check: remove it from "
                                 "grads, or create it with requires_grad=True")
        if t.is_complex():
            raise LensValueError(f"{name!r} is complex: lens.check grades real gradients (check its real and imaginary "
                                 "parts as real tensors, e.g. torch.view_as_real)")
        if g.dtype != t.dtype:
            raise LensTypeError(f"the gradient for {name!r} is {str(g.dtype)[6:]} but {name} is {str(t.dtype)[6:]}: "
                                f"compute d{name} in {str(t.dtype)[6:]} (PyTorch's gradient has the tensor's dtype)")
        if g.device != t.device:
            raise LensTypeError(f"the gradient for {name!r} is on {g.device} but {name} is on {t.device}: move it "
                                f"with d{name}.to({name}.device)")
        out.append((name, t, g.detach()))
    return out, pairs


# ----------------------------------------------------------------------------- tensor graphs

class _Pos:
    """Where a named tensor's gradient gathers: (node, output nr); a leaf under its AccumulateGrad node."""

    __slots__ = ("name", "t", "L", "fn", "nr", "nid", "leaf", "usable")

    def __init__(self, name, t, L, fn, nr, nid, leaf):
        self.name, self.t, self.L, self.fn, self.nr, self.nid, self.leaf = name, t, L, fn, nr, nid, leaf
        self.usable = _usable(L, tuple(t.shape))

    @property
    def key(self):
        return (self.fn, self.nr)


def _usable(L: torch.Tensor, shape: tuple):
    """The learner's gradient as it can flow on: itself, or summed to the tensor's shape where it was left
    broadcast; None when it cannot (another shape)."""
    if tuple(L.shape) == shape:
        return L
    if L.numel() == math.prod(shape) and [s for s in L.shape if s != 1] == [s for s in shape if s != 1]:
        return L.reshape(shape)  # only size-1 dims differ: the same numbers (the lecture's cmp compares them so)
    try:
        torch.broadcast_shapes(shape, tuple(L.shape))
        if len(L.shape) >= len(shape):
            return L.sum_to_size(shape)
    except RuntimeError:
        pass
    return None


def _check_tensors(root, grads, params) -> CheckReport:
    entries, pairs = _entries(grads, params)
    tr, w = traced(root, pairs)
    accs = {id(fn.variable): fn for fn in w.order if type(fn).__name__ == "AccumulateGrad"}
    pos = []
    for name, t, L in entries:
        fn, nr = (accs.get(id(t)), 0) if t.grad_fn is None else (t.grad_fn, t.output_nr)
        if fn is None or fn not in w.ids:
            raise LensValueError(f"{name!r} is not part of the graph behind the root: no gradient of the loss flows "
                                 f"to it (check the name, or that the loss is computed from {name})")
        same = next((p.name for p in pos if (p.fn, p.nr) == (fn, nr)), None)
        if same is not None:
            raise LensValueError(f"{same!r} and {name!r} are the same tensor: grade its gradient once")
        pos.append(_Pos(name, t, L, fn, nr, w.ids[fn], t.grad_fn is None))
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    g = _Graph(tr, w, pos, roots, tuple(t for _, t in pairs if t.grad_fn is None))
    notes = []
    # T: PyTorch's gradients: .grad where backward() left them, else from the graph
    given = {p.name: _np(g) for p in pos for g in [_grad_of(p.t)]
             if g is not None and tuple(g.shape) == tuple(p.t.shape)}
    if g.alive:
        T, _ = g.flow({})
        stale = [n for n, v in given.items() if not np.array_equal(v, T[n], equal_nan=True)]
        if stale:
            notes.append(f"note: .grad of {', '.join(stale)} differs from this graph's gradient (it holds another "
                         "backward's: of another loss, or several passes added up); checked against this graph")
    else:
        T, _ = g.flow(given)
        T.update(given)
    # C: the correct step from the learner's own upstream gradients, and its parts (one per use of the tensor)
    C, parts = g.flow({p.name: _np(p.usable) if p.usable is not None else T[p.name] for p in pos}, parts=True)
    M = g.magnitudes()
    E = g.allowances(T, M)
    rows, status, bad_shapes = [], {}, {p.name for p in pos if _shape_bad(p)}
    for p in g.order:
        rows.append(_grade(p, T[p.name], C[p.name], E.get(p.name), M.get(p.name), parts.get(p.name, []), status,
                           g.upstream[p.name], g.alive, tr, bad_shapes, g.generous.get(p.name)))
        status[p.name] = rows[-1]["status"]
    if g.estimated & {r["name"] for r in rows if r["approximate"] is not None and not r["exact"]}:
        notes.append("note: backward() freed tensors this check needs, so some rounding bounds are estimated from the "
                     "gradients themselves; check before loss.backward() (or with retain_graph=True) for exact ones")
    return CheckReport(rows, tr, g.alive, notes)


class _Graph:
    """The graph once, for the passes `check` makes over it: PyTorch's own nodes while the graph is alive (engine),
    else the mirror's rules on the saved tensors taken from the named tensors they were saved from."""

    def __init__(self, tr, w, pos, roots, keep):
        from .mirror.driver import FREED, _Saved, consumers_first, read_ops
        self.tr, self.w, self.pos, self.keep = tr, w, pos, keep
        self.alive = not any(s["state"] == "freed" for _, d in tr.graph.nodes(data=True) for s in d["saved"])
        self.seeds: dict = {}
        for r in roots:
            self.seeds.setdefault((r.grad_fn, r.output_nr), []).append(torch.ones_like(r))
        self.by_key = {p.key: p for p in pos}
        self.named = {(p.nid, p.nr): p for p in pos}
        fns = {nid: fn for fn, nid in w.ids.items()}
        tensors = {(p.nid, p.nr): p.t for p in pos}
        self.ops = read_ops(tr, w, freed_ok=True)
        for nid, op in self.ops.items():
            if op.note == FREED:
                self.ops[nid] = _recovered(op, fns[nid], w.ids, tensors)
        self.saved = _Saved(list(self.ops.values()))  # the saved tensors as arrays, made once each
        self.ids = consumers_first(w.order, w.nexts, w.ids)
        self.depth = {r: 1 for r in tr.roots}
        for nid in self.ids:
            for dest in (self.ops[nid].nexts if nid in self.ops else ()):
                if dest is not None:
                    self.depth[dest[0]] = max(self.depth.get(dest[0], 1), self.depth.get(nid, 1) + 1)
        when = {nid: i for i, nid in enumerate(self.ids)}
        self.order = sorted(pos, key=lambda p: (when.get(p.nid, len(when)), p.nr))  # backward order
        self.upstream = _upstream(w, self.by_key, roots)
        self.estimated: set = set()
        self.generous: dict = {}  # name -> the most rounding could give where M is estimated (allowances)

    # -- gradients: a dict name -> float64 array (None: none reached; UNKNOWN: cannot be computed)
    def flow(self, force, parts: bool = False) -> tuple[dict, dict]:
        """What reaches each named tensor when the gradients in `force` (name -> array, or a function (position,
        reached) -> array) are put in place at the named tensors; with `parts`, each use's gradient too."""
        if self.alive:
            return self._engine(force, parts)
        return self._rules(force, parts, values=True)

    def _engine(self, force, parts):
        def at(fn, nr, reached):
            p = self.by_key.get((fn, nr))
            if p is None:
                return reached
            got = reached_np[p.name] = None if reached is None else _np(reached)
            f = force(p, got) if callable(force) else force.get(p.name, got)
            return reached if f is got else _tensor(f, p.t)
        reached_np: dict = {}
        r = engine.run(self.w.order, self.w.nexts, self.seeds, force=at, parts=set(self.by_key) if parts else None,
                       keep=self.keep)
        split = {self.by_key[k].name: [(self.w.ids.get(s), slot, None if v is None else _np(v)) for s, slot, v in ps]
                 for k, ps in r.parts.items()}
        return {p.name: reached_np.get(p.name) for p in self.pos}, split

    def _rules(self, force, parts, values=True):
        from .mirror.bounds import Mag
        grads: dict = {}
        for (fn, nr), gs in self.seeds.items():
            grads[(self.w.ids[fn], nr)] = sum(_np(x) for x in gs) if values else Mag.grad(np.ones(tuple(gs[0].shape)))
        reached, split = {}, {}

        def arrive(dest, g, sender, slot):
            if parts and dest in self.named:
                split.setdefault(self.named[dest].name, []).append((sender, slot, g))
            old = grads.get(dest)
            grads[dest] = g if old is None else (engine.UNKNOWN if _unknown(g) or _unknown(old) else old + g)

        def take(key):
            g = grads.pop(key, None)
            p = self.named.get(key)
            if p is None:
                return g
            reached[p.name] = g
            return force(p, g) if callable(force) else force.get(p.name, g)
        for nid in self.ids:
            op = self.ops.get(nid)
            if op is None:
                continue
            ins = [take((nid, k)) for k in range(max(1, len(op.out_shapes)))]
            if all(g is None for g in ins):
                continue
            with np.errstate(all="ignore"):
                outs = _value_step(op, ins, self.saved) if values else _mag_step(op, ins, self.saved)
            for slot, (g, dest) in enumerate(zip(outs, op.nexts)):
                if g is not None and dest is not None:
                    arrive(dest, g, nid, slot)
        for p in self.pos:
            if p.leaf:
                take((p.nid, 0))
        return {p.name: reached.get(p.name) for p in self.pos}, split

    def magnitudes(self) -> dict:
        """M(x) per name: a bounds.Mag of the terms summed from the named gradients (the learner's, in magnitude)
        to x; None where missing (those names go to `estimated`)."""
        def seed(p, g):
            return Mag.grad(np.abs(_np(p.usable if p.usable is not None else p.L)))
        from .mirror.bounds import Mag
        got, _ = self._rules(seed, False, values=False)
        out = {}
        for name, m in got.items():
            if _unknown(m):
                self.estimated.add(name)
            out[name] = None if _unknown(m) else m
        return out

    def allowances(self, T: dict, M: dict) -> dict:
        """E(x) per name: how far a correct line may be from PyTorch's, |P(x)| + 3 B(x) (module docstring). P is
        carried through the graph on the differences, each clipped to what its own line allows."""
        E: dict = {}

        def force(p, reached):
            t, dtype = T[p.name], _dtype(p.t)
            if _unknown(t):
                E[p.name] = None
                return np.zeros(tuple(p.t.shape))
            prop = np.abs(reached) if isinstance(reached, np.ndarray) else 0.0
            b = _bound(M.get(p.name), dtype)
            if b is None:
                b, top = _estimate(p, t, self.depth.get(p.nid, 1), dtype)
                self.generous[p.name] = prop + 3 * top + _U.get(dtype, 0.0) * np.abs(t)
            e = np.broadcast_to(prop + 3 * b + _U.get(dtype, 0.0) * np.abs(t), tuple(p.t.shape))
            E[p.name] = e
            if p.usable is None:
                return np.zeros(tuple(p.t.shape))
            with np.errstate(invalid="ignore"):
                d = _np(p.usable) - t
                return np.where(np.isfinite(d), np.clip(d, -e, e), 0.0)
        seeds = self.seeds
        self.seeds = {k: [torch.zeros_like(x) for x in v] for k, v in seeds.items()}
        try:
            self.flow(force)
        finally:
            self.seeds = seeds
        return E


def _grad_of(t: torch.Tensor):
    """``t.grad`` where PyTorch keeps one (a leaf, or a tensor that called retain_grad()), without the warning a
    non-leaf's ``.grad`` gives."""
    return t.grad if t.is_leaf or t.retains_grad else None


def _unknown(g) -> bool:
    return g is engine.UNKNOWN


def _tensor(a, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(like.dtype).to(like.device)


def _value_step(op, ins: list, saved) -> list:
    """The mirror's rule on float64 values (UNKNOWN where it cannot run)."""
    from .mirror.driver import run_rule
    if any(_unknown(g) for g in ins) or op.note is not None or op.type not in _rules():
        return [engine.UNKNOWN] * len(op.nexts)
    try:
        return run_rule(op, ins, saved.view(op.saved))
    except Exception:  # noqa: BLE001 - a case the rule does not cover: unknown, not a crash
        return [engine.UNKNOWN] * len(op.nexts)


def _upstream(w, by_key: dict, roots: list) -> dict:
    """Per named tensor, the names (and "loss") whose gradients its line is computed from: the nearest named
    tensors towards the loss along the graph."""
    consumers: dict = {}
    for fn, nf in zip(w.order, w.nexts):
        for f, nr in nf:
            if f is not None:
                consumers.setdefault((f, nr), set()).add(fn)
    root_keys = {(r.grad_fn, r.output_nr) for r in roots}
    out = {}
    for key, p in by_key.items():
        found, stack, seen = set(), [key], set()
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            if k in root_keys:
                found.add("loss")
            for c in consumers.get(k, ()):
                for o in ((c, nr) for nr in range(_n_outputs(c))):
                    if o in by_key:
                        found.add(by_key[o].name)
                    elif o not in seen:
                        stack.append(o)
        out[p.name] = found
    return out


def _n_outputs(fn) -> int:
    from ._torch import input_metadata
    return max(1, len(input_metadata(fn)))


# ----------------------------------------------------------------------------- bounds

# Saved-tensor slots and where the tensor came from: an input (next_functions slot) or an output of the node.
_INPUT_SLOT = {"self": 0, "other": 1, "mat2": 1, "vec": 1, "tensor": 1, "exponent": 1, "input": 0, "weight": 1,
               "bias": 2}
_INPUT_SLOT_OF = {"AddmmBackward0": {"mat1": 1, "mat2": 2}, "BaddbmmBackward0": {"batch1": 1, "batch2": 2},
                  "AddmvBackward0": {"mat": 1, "vec": 2}}
_OUTPUT_SLOT = {"result": 0, "result0": 0}
# Nodes that only route gradients (every coefficient 0 or 1 / count): their terms are bounded by all they receive.
_ROUTING = frozenset({"IndexBackward0", "IndexSelectBackward0", "GatherBackward0", "MaxBackward0", "MinBackward0",
                      "MaxBackward1", "MinBackward1", "AmaxBackward0", "AminBackward0", "SortBackward0",
                      "TopkBackward0", "KthvalueBackward0", "MedianBackward1", "ModeBackward0", "TakeBackward0",
                      "MaskedSelectBackward0", "EmbeddingBackward0", "CummaxBackward0", "CumminBackward0"})


def _recovered(op, fn, ids: dict, tensors: dict):
    """`op` (a node whose saved tensors backward() freed) with them taken from the tensors they were saved from:
    its inputs and outputs that are leaves or named; `op` unchanged when one cannot be had."""
    from ._torch import saved_names
    saved = {}
    slots = _INPUT_SLOT_OF.get(op.type, {})
    for name in saved_names(fn, {})[0]:
        t = None
        if name == "indices" and op.type in ("MaxBackward0", "MinBackward0"):
            t = _arg_extreme(op, fn, ids, tensors)
            if t is None:
                return op
            saved[name] = torch.from_numpy(t)
            continue
        if name in _OUTPUT_SLOT:
            t = tensors.get((op.id, _OUTPUT_SLOT[name]))
        else:
            k = slots.get(name, _INPUT_SLOT.get(name))
            if k is not None and k < len(fn.next_functions):
                f, nr = fn.next_functions[k]
                if f is not None:
                    t = f.variable if type(f).__name__ == "AccumulateGrad" else tensors.get((ids.get(f), nr))
        if t is None:
            return op
        saved[name] = t.detach()
    return op._replace(saved=saved, note=None)


def _arg_extreme(op, fn, ids: dict, tensors: dict):
    """The indices max/min(dim) saved, found again from its input, when its input and its output values are at hand
    and agree with them (so ties cannot mislead)."""
    f, nr = fn.next_functions[0]
    x = None if f is None else (f.variable if type(f).__name__ == "AccumulateGrad" else tensors.get((ids.get(f), nr)))
    y = tensors.get((op.id, 0))
    if x is None or y is None:
        return None
    x, y, d = _np(x), _np(y), op.attrs["dim"] % max(1, x.ndim)
    idx = (np.argmax if op.type == "MaxBackward0" else np.argmin)(x, axis=d)
    idx = np.expand_dims(idx, d)
    got = np.take_along_axis(x, idx, axis=d)
    want = y if op.attrs["keepdim"] else np.expand_dims(y, d)
    if got.shape != want.shape or not np.array_equal(got, want) or np.sum(x == got, axis=d).max(initial=1) > 1:
        return None
    return idx if op.attrs["keepdim"] else np.squeeze(idx, d)


def _mag_step(op, ins: list, saved) -> list:
    """Magnitudes out of one node, per next_functions slot (UNKNOWN where they cannot be had)."""
    from .mirror.bounds import Mag, MagCtx
    from .mirror.driver import run_rule
    if any(_unknown(g) for g in ins):
        return [engine.UNKNOWN] * len(op.nexts)
    if op.note is None and op.type in _rules():
        try:
            return run_rule(op, ins, saved.view(op.saved, "mags"), MagCtx)
        except Exception:  # noqa: BLE001 - a rule that cannot run on magnitudes: bounded below, or unknown
            pass
    if op.type in _ROUTING:
        total = sum(float(g.m.sum()) for g in ins if g is not None)
        n = max(g.n for g in ins if g is not None) + sum(g.m.size for g in ins if g is not None)
        return [None if s is None or dest is None else Mag(np.full(tuple(s), total), None, n)
                for s, dest in zip(op.in_shapes, op.nexts)]
    return [engine.UNKNOWN] * len(op.nexts)


def _rules():
    from .mirror.table import RULES
    return RULES


def _np(t) -> np.ndarray:
    if isinstance(t, np.ndarray) or t is None or t is engine.UNKNOWN:
        return t
    from .capture import to_numpy
    return to_numpy(t)


def _bound(mag, dtype: str) -> np.ndarray | None:
    """B = gamma_n(u) M + n eta: the rounding of one computation of the line (bounds.local_bound's PyTorch part)."""
    if mag is None:
        return None
    from .mirror.bounds import UNDERFLOW, gamma, unit_roundoff
    n = max(mag.n, 1)
    return gamma(n, unit_roundoff(dtype)) * mag.m + n * UNDERFLOW.get(dtype, 0.0)


def _estimate(p, t, depth: int, dtype: str) -> tuple[np.ndarray, float]:
    """Where the magnitudes are missing (a node whose saved tensors are gone and cannot be taken from the named
    tensors): M estimated as |L| + |T|, with 4 roundings (an elementary function's) per node from the loss. Not
    a bound: a line that cancels (1 - y**2 near y = 1) rounds by more, so a difference beyond it but within the
    generous one (the second result: the same roundings of the line's largest values, as a cancelling element rounds
    like the tensor's largest ones, not like itself) is `unknown`, not `wrong`."""
    from .mirror.bounds import gamma
    k = gamma(4 * depth, _U.get(dtype, _U["float32"]))
    at, au = np.abs(t), (np.abs(_np(p.usable)) if p.usable is not None else 0.0)
    return k * (at + au), k * (float(np.max(at, initial=0.0)) + float(np.max(au, initial=0.0)))


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- one row

def _close(a: np.ndarray, b: np.ndarray, bound) -> bool:
    if a.shape != b.shape:
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = np.where(same, 0.0, np.abs(a - b))
        diff = np.where(np.isnan(diff), np.inf, diff)
        return bool(np.all(diff <= (0.0 if bound is None else bound)))


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        try:
            a, b = np.broadcast_arrays(a, b)
        except ValueError:
            return math.inf
    with np.errstate(invalid="ignore"):
        d = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(d), np.inf, d), initial=0.0))


def _shape_bad(p: _Pos) -> bool:
    """The learner's gradient has another shape than its tensor (not merely other size-1 dims)."""
    return tuple(p.L.shape) != tuple(p.t.shape) and (p.usable is None or p.usable.numel() != p.L.numel())


def _grade(p: _Pos, t, c, e, mag, parts, status: dict, ups: set, alive: bool, tr, bad_shapes: set,
           generous=None) -> dict:
    shape = tuple(p.t.shape)
    L, dtype = _np(p.L), _dtype(p.t)
    if t is None or _unknown(t):
        how = (f"call {p.name}.retain_grad() before loss.backward(), or check before backward" if not alive else
               "no gradient of the loss reaches it")
        return _row(p.name, p.nid, shape, None, None, None, "unknown",
                    hint=f"PyTorch's gradient of {p.name} is not known: {how}")
    reshaped = tuple(p.L.shape) != shape and not _shape_bad(p)
    if reshaped:
        L = _np(p.usable)
    exact = L.shape == t.shape and bool(np.array_equal(L, t, equal_nan=True))
    approx = None if e is None else (exact or _close(L, t, e))
    md = _maxdiff(L, t)
    bound = None if e is None else float(np.max(e, initial=0.0))
    if exact or approx:
        note = (f"d{p.name} has shape {_sh(p.L.shape)}, {p.name} {_sh(shape)}: the same numbers (keepdim=True gives "
                "the tensor's own shape)") if reshaped else None
        return _row(p.name, p.nid, shape, exact, True, md, "right", hint=note, bound=bound)
    ups = sorted(n for n in ups if n != "loss")
    up_wrong = [n for n in ups if status.get(n) != "right"]
    up_shapes = [n for n in ups if n in bad_shapes]
    line_tol = None if mag is None else 2 * _bound(mag, dtype) + _U.get(dtype, 0.0) * np.abs(t)
    line_tol = e if line_tol is None else line_tol
    known_c = c is not None and not _unknown(c)

    def wrong(ref, tol, uses):
        kind, factor, hint = _diagnose(p, L, ref, uses, tol, tr) or (None, None, None)
        hint = hint or f"d{p.name} differs from the gradient by up to {md:.2g}: recompute this line (its inputs are " \
                       "right)"
        return _row(p.name, p.nid, shape, exact, approx, md, "wrong", kind, factor, hint, bound)

    def unknown(why):
        return _row(p.name, p.nid, shape, exact, approx, md, "unknown", hint=why, bound=bound)
    if generous is not None and not _shape_bad(p):  # M estimated: a verdict only where the difference is clear
        if _close(L, t, np.broadcast_to(generous, t.shape)):
            approx = None
            return unknown(f"d{p.name} differs from PyTorch's by up to {md:.2g}: more than the rounding its values "
                           "alone suggest, less than a long chain of roundings could give, and backward() freed the "
                           "tensors that bound it; call lens.check before loss.backward() (or after "
                           "backward(retain_graph=True)) for a verdict")
        e = line_tol = np.broadcast_to(generous, t.shape)  # (at least e everywhere: its terms at the largest values)
    if _shape_bad(p) and not up_shapes:  # the shape went wrong in this line
        return wrong(c if known_c else t, line_tol, [])
    if known_c:
        if p.usable is not None and _close(_np(p.usable), c, line_tol):
            kind, factor, _ = (_diagnose(p, L, t, [], e, tr) or (None, None, None)) if _shape_bad(p) else (None,) * 3
            why = (f"right given d{', d'.join(up_wrong)}" if up_wrong else
                   "right given the gradients it was computed from")
            return _row(p.name, p.nid, shape, exact, approx, md, "inherits", kind, factor,
                        f"{why}: fix the first wrong line above; this one then agrees", bound)
        if up_shapes:
            return unknown(f"cannot tell whether this line is right: it is computed from d{', d'.join(up_shapes)}, "
                           "whose shape is wrong; fix that line first")
        return wrong(c, line_tol, parts)
    if up_wrong:
        return unknown(f"cannot tell whether this line is right: it is computed from d{', d'.join(up_wrong)}, which "
                       "is not right yet; fix that first, or call lens.check before loss.backward() (or after "
                       "backward(retain_graph=True)) to judge each line on its own")
    return wrong(t, e, parts)


def _diagnose(p: _Pos, L: np.ndarray, R: np.ndarray, parts: list, tol, tr):
    """(diagnosis, factor, hint) for a wrong line, or None: what L is, relative to the reference R."""
    name, shape = p.name, tuple(p.t.shape)
    slack = 8 * _U.get(_dtype(p.t), 0.0)

    def close(a, b):
        if a.shape != b.shape:
            return False
        extra = slack * (np.abs(a) + np.abs(b))
        return _close(a, b, (0.0 if tol is None else np.broadcast_to(tol, b.shape)) + extra)

    if L.shape != shape:
        if len(shape) == 2 and L.shape == shape[::-1]:
            return "transpose", None, (f"d{name} has shape {_sh(L.shape)} but {name} has shape {_sh(shape)}: "
                                       f"transpose it (e.g. the other factor's .T in the matrix product)")
        try:
            torch.broadcast_shapes(shape, L.shape)
            dims = [i for i in range(len(L.shape)) if i >= len(L.shape) - len(shape) and
                    shape[i - (len(L.shape) - len(shape))] == 1 and L.shape[i] != 1]
            lead = list(range(len(L.shape) - len(shape)))
            keep = ", keepdim=True" if dims else ""
            over = dims + lead
            how = f"sum d{name} over dim {over[0] if len(over) == 1 else tuple(over)}{keep}"
            return "broadcast", None, (f"{name} has shape {_sh(shape)} but was broadcast to {_sh(L.shape)} in the "
                                       f"forward pass, so its gradient needs a sum over the broadcast dims: {how}")
        except RuntimeError:
            return None, None, f"d{name} has shape {_sh(L.shape)} but {name} has shape {_sh(shape)}"
    if len(shape) == 2 and shape[0] == shape[1] and close(L.T, R) and not close(L, R):
        return "transpose", None, f"d{name} is the transpose of the right gradient: swap the factors' order or .T"
    op = _one_path(L, R, parts, close)
    if op is not None:  # before the sign: with two uses, one use alone can be minus the sum
        return "one_path", None, _one_path_hint(name, op, parts, tr)
    if close(-L, R):
        return "sign", None, f"d{name} has the wrong sign: the gradient is the negative of it"
    nz = np.abs(R) > 0
    if np.any(nz):
        ratio = np.median(L[nz] / R[nz])
        if np.isfinite(ratio) and ratio != 0 and abs(ratio - 1) > 1e-6 and close(L, ratio * R):
            f = Fraction(float(ratio)).limit_denominator(1000)
            near = abs(float(f) - ratio) <= 16 * _U.get(_dtype(p.t), 0.0) * abs(ratio)
            shown = f"{float(ratio):.6g}" + (f" (= {f})" if near and f.denominator > 1 else "")
            return "scale", float(ratio), (f"d{name} is {shown} times the gradient: a constant factor is off "
                                           f"(1/n for 1/(n-1)? a missing 2 or 0.5?)")
    return None


def _one_path(L, R, parts: list, close):
    """The uses of a tensor (some but not all) whose gradients add up to L, or None. A use whose gradient is
    unknown (after backward) is judged through R: L + (the known others) = R."""
    vals = [None if g is None or _unknown(g) else _np(g) for _, _, g in parts]
    if len(vals) < 2 or len(vals) > _MAX_SUBSETS:
        return None
    idx = range(len(vals))
    for k in range(1, len(vals)):
        for subset in itertools.combinations(idx, k):
            rest = [i for i in idx if i not in subset]
            if all(vals[i] is not None for i in subset):
                got = sum(vals[i] for i in subset)
            elif all(vals[i] is not None for i in rest):
                got = R - sum(vals[i] for i in rest)
            else:
                continue
            if np.shape(got) == L.shape and close(L, got):
                return list(subset)
    return None


def _one_path_hint(name: str, subset: list, parts: list, tr) -> str:
    uses = [_use(tr, parts[i][0]) for i in range(len(parts))]
    have = ", ".join(uses[i] for i in subset)
    miss = ", ".join(u for i, u in enumerate(uses) if i not in subset)
    return (f"d{name} holds only the gradient through {have}; {name} is also used by {miss}: add that path's "
            f"gradient with +=")


def _use(tr, nid) -> str:
    if nid is None:
        return "the loss"
    d = tr.graph.nodes[nid]
    return f"{d['name']} ({d['type']})" if d.get("name") else d["type"]


def _sh(s) -> str:
    return "(" + ", ".join(str(int(x)) for x in s) + ("," if len(s) == 1 else "") + ")"
