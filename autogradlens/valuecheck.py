"""`lens.check` on micrograd-style values: each value's hand-set ``.grad`` against the true gradient of the root.

The true gradients are computed here from each value's op and data (the chain rule, consumers first), never by
calling the values' own ``_backward`` (the learner's code, which is what is being checked) and without changing
any ``.grad``. Rows are the labelled values (all values when none is labelled), in backward order. As for
tensors, C(v) applies the correct local steps to the learner's own gradients of the values that use v, so each
line is judged on its own (``inherits`` when only an earlier one is wrong).
"""

from __future__ import annotations

import itertools
import math

from .checking import CheckReport, _row
from .tracing import Trace
from .valuegraph import trace_value, walk_values

__all__ = ["check_values"]

_U64 = 2.0**-53
_UNKNOWN = None


def _locals(v, kids: list) -> list | None:
    """(child, d v / d child) per use of a child by v, or None for an op without a rule here. micrograd keeps
    `_prev` as a set: `a + a` lists `a` once, and is two uses of it."""
    op = str(v._op)
    if not op:
        return []
    if op in ("+", "*") and len(kids) == 1:
        kids = kids * 2
    if op == "+" and len(kids) == 2:
        return [(kids[0], 1.0), (kids[1], 1.0)]
    if op == "*" and len(kids) == 2:
        a, b = kids
        return [(a, float(b.data)), (b, float(a.data))]
    if len(kids) != 1:
        return None
    (c,), x, y = kids, float(kids[0].data), float(v.data)
    if op.startswith("**"):
        try:
            k = float(op[2:])
        except ValueError:
            return None
        return [(c, k * _pow(x, k - 1))]
    rule = {"tanh": lambda: 1 - y * y, "exp": lambda: y, "log": lambda: _div(1.0, x), "ReLU": lambda: float(y > 0),
            "relu": lambda: float(y > 0), "sigmoid": lambda: y * (1 - y), "neg": lambda: -1.0}.get(op)
    return None if rule is None else [(c, rule())]


def _pow(x: float, k: float) -> float:
    try:
        return x**k
    except ZeroDivisionError:
        return math.inf


def _div(a: float, b: float) -> float:
    return a / b if b else math.copysign(math.inf, a) if a else math.nan


def check_values(root) -> CheckReport:
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    order, kids, ids = walk_values(roots)
    uses = {id(v): _locals(v, kids[id(v)]) for v in order}
    topo = _consumers_first(order, kids)
    labelled = [v for v in order if getattr(v, "label", "")]
    rows_v = labelled or order
    row_ids = {id(v) for v in rows_v}
    learner = {id(v): float(v.grad) for v in rows_v}

    def flow(force, parts=False):
        """Gradients reaching every value (consumers first), `force` replacing them at the row values."""
        g = {id(r): 1.0 for r in roots}
        reached, split = {}, {}
        for v in topo:
            k = id(v)
            got = g.get(k, 0.0)
            if k in row_ids:
                reached[k] = got
                got = force(v, got)
            us = uses[k]
            for slot, (c, loc) in enumerate(us or [(c, None) for c in kids[k]]):
                part = _UNKNOWN if us is None or got is _UNKNOWN else loc * got
                if parts and id(c) in row_ids:
                    split.setdefault(id(c), []).append((ids[k], slot, part, loc))
                old = g.get(id(c), 0.0)
                g[id(c)] = _UNKNOWN if part is _UNKNOWN or old is _UNKNOWN else old + part
        return reached, split

    truth, _ = flow(lambda v, got: got)
    forced, parts = flow(lambda v, got: learner[id(v)], parts=True)
    mags, counts = _magnitudes(topo, roots, uses, kids, row_ids, learner)
    allow = {}

    def clip(v, got):  # the differences carried from upstream, each clipped to what its own line allows
        k = id(v)
        t = truth.get(k)
        if t is _UNKNOWN or got is _UNKNOWN:
            allow[k] = None
            return 0.0
        e = abs(got) + 3 * _gamma(counts.get(k, 1)) * mags.get(k, 0.0) + _U64 * abs(t)
        allow[k] = e
        d = learner[k] - t
        return max(-e, min(e, d)) if math.isfinite(d) else 0.0
    flow(clip)
    trace = Trace(trace_value(root), [ids[id(r)] for r in roots] if isinstance(root, (list, tuple)) else
                  ids[id(roots[0])])
    rows, status = [], {}
    for v in topo:
        if id(v) not in row_ids:
            continue
        row = _grade(v, ids[id(v)], learner[id(v)], truth.get(id(v)), forced.get(id(v)), allow.get(id(v)),
                     mags.get(id(v)), counts.get(id(v), 1), parts.get(id(v), []), status, order, kids, row_ids)
        status[id(v)] = row["status"]
        rows.append(row)
    return CheckReport(rows, trace, True)


def _consumers_first(order: list, kids: dict) -> list:
    indeg = {id(v): 0 for v in order}
    for v in order:
        for c in kids[id(v)]:
            indeg[id(c)] += 1
    ready, out = [v for v in reversed(order) if indeg[id(v)] == 0], []
    while ready:
        v = ready.pop()
        out.append(v)
        for c in reversed(kids[id(v)]):
            indeg[id(c)] -= 1
            if indeg[id(c)] == 0:
                ready.append(c)
    return out


def _magnitudes(topo, roots, uses, kids, row_ids, learner) -> tuple[dict, dict]:
    """M(v): the sum of |local| |gradient| over the terms that meet at v, from the learner's gradients of the row
    values; and the roundings (one per multiply and per add) on the way."""
    m = {id(r): 1.0 for r in roots}
    n = {id(r): 0 for r in roots}
    out_m, out_n = {}, {}
    for v in topo:
        k = id(v)
        got, cnt = m.get(k, 0.0), n.get(k, 0)
        if k in row_ids:
            out_m[k], out_n[k] = got, max(cnt, 1)
            got, cnt = abs(learner[k]), 0
        for c, loc in uses[k] or ():
            term = abs(loc) * got
            m[id(c)] = m.get(id(c), 0.0) + term
            n[id(c)] = max(n.get(id(c), 0), cnt + 1) + (1 if id(c) in n else 0)
    return out_m, out_n


def _gamma(n: int) -> float:
    nu = (n + 4) * _U64  # + an elementary function's 4 roundings (tanh, exp) in the local derivative
    return nu / (1 - nu)


def _grade(v, nid, L, t, c, e, m, n, parts, status, order, kids, row_ids) -> dict:
    name = str(getattr(v, "label", "") or nid)
    if t is _UNKNOWN:
        return _row(name, nid, (), None, None, None, "unknown",
                    hint=f"the true gradient of {name} is not known here: an op on the way has no rule in lens.check "
                         f"(use lens.Value's ops: + * ** tanh exp log relu sigmoid)")
    exact = L == t or (math.isnan(L) and math.isnan(t))
    md = 0.0 if exact else abs(L - t)
    approx = exact or (e is not None and md <= e)
    if approx:
        return _row(name, nid, (), exact, True, md, "right", bound=e)
    line = 2 * _gamma(n) * (m or 0.0) + _U64 * abs(t)
    if c is not _UNKNOWN and c is not None and (L == c or abs(L - c) <= line):
        ups = sorted({str(getattr(u, "label", "") or "") for u in _users(v, order, kids)} - {""})
        why = f"right given the gradient{'s' if len(ups) > 1 else ''} of {', '.join(ups)}" if ups else "right"
        return _row(name, nid, (), exact, approx, md, "inherits",
                    hint=f"{why}: fix the first wrong value above; this one then agrees", bound=e)
    ref = t if c is _UNKNOWN or c is None else c
    kind, factor, hint = _diagnose(name, L, ref, parts, line) or (None, None, None)
    return _row(name, nid, (), exact, approx, md, "wrong", kind, factor,
                hint or f"{name}.grad is {L:.6g}, the gradient is {ref:.6g}", bound=e)


def _users(v, order, kids) -> list:
    return [u for u in order if any(c is v for c in kids[id(u)])]


def _diagnose(name: str, L: float, R: float, parts: list, tol: float):
    def close(a, b):
        return a == b or abs(a - b) <= tol + 8 * _U64 * (abs(a) + abs(b))
    known = [(i, p) for i, (_, _, p, _) in enumerate(parts) if p is not _UNKNOWN]
    if 2 <= len(parts) <= 6 and len(known) == len(parts):
        for k in range(1, len(parts)):
            for subset in itertools.combinations(range(len(parts)), k):
                if close(L, sum(parts[i][2] for i in subset)):
                    return "one_path", None, (f"{name} is used {len(parts)} times; {name}.grad holds only "
                                              f"{'one use' if k == 1 else f'{k} uses'}: accumulate every use "
                                              f"with += (not =) in _backward")
    if close(-L, R) and R != 0:
        return "sign", None, f"{name}.grad has the wrong sign: the gradient is {R:.6g}"
    locs = [loc for _, _, _, loc in parts if loc is not None]
    if locs and not close(L, R):
        for k in range(1, len(locs) + 1):
            for subset in itertools.combinations(range(len(locs)), k):
                if close(L, sum(locs[i] for i in subset)):
                    return "local_only", None, (f"{name}.grad is the local derivative alone: multiply it by the "
                                                "gradient of the value it feeds (the chain rule: local * out.grad)")
    if R != 0 and L != 0:
        f = L / R
        if abs(f - 1) > 1e-9 and close(L, f * R):
            return "scale", f, f"{name}.grad is {f:.6g} times the gradient {R:.6g}: a constant factor is off"
    return None
