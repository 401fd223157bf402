"""Verdicts: the mirror's gradients against PyTorch's, within a bound on rounding errors.


NOTE [bound] Every rule is linear in its incoming gradient G. Running it a second time on magnitudes
(bounds.Mag: ``a - b`` gives |a| + |b|, ``a @ b`` gives |a| @ |b|, ...) gives for each output element M,
the sum of the absolute values of the terms that were added, and n, how many roundings a result went
through (+1 per add or multiply, + k - 1 for a sum of k terms, + K for a length-K dot product, + 4 for an
elementary function). With u the unit roundoff of the graph's dtype (2^-53 float64, 2^-24 float32, 2^-11
float16, 2^-8 bfloat16; the lowest precision among the node's input and output dtypes, so autocast is
covered) and gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability of Numerical Algorithms, §3):

- local: |mirror - torch| <= B = (gamma_n(u) + 3 gamma_n(u_64)) * M(|G|) + n * eta
  (PyTorch's rounding in the graph dtype plus the mirror's own in float64; eta = half the smallest
  subnormal, for underflow). For float16/bfloat16, whose sums PyTorch accumulates in float32 (opmath),
  gamma_n(u) becomes gamma_n(u_32) + gamma_r(u), r counting only the roundings to the dtype itself.
  A float32 convolution or matrix product on CUDA that may run in TensorFloat-32 (cudnn.allow_tf32, on by
  default; cuda.matmul.allow_tf32) adds gamma_2(2^-10): each factor keeps 10 mantissa bits. A half-precision
  CUDA node whose backward adds with atomics in the dtype (upsampling, index, gather, pooling) gets gamma_n(u).
  This is the dot-product bound |fl(x.y) - x.y| <= gamma_n |x|.|y|: it scales with the terms, so a
  gradient that is mathematically 0 but made of large terms (a bias before a normalisation) gets the
  allowance its terms deserve, while a product of small terms gets a small one.
- end to end: the mirror's own gradient differs from PyTorch's by at most E, carried from the roots
  (E = 0 there): E_out = |rule(d)| + B + (the local check's rounding allowance), with d = G_mirror - G_torch
  the difference already present at the node. By linearity rule(d) = rule(G_mirror) - rule(G_torch), so
  it is known exactly (no worst case: running M(E_in) instead would grow by about sqrt(K) per layer and
  hide a 1e-3 change in a float32 ResNet). Where |d| exceeds the incoming E (a real disagreement, such as
  a tensor hook), only its admissible part (d clipped to +-E) is carried, so the disagreement is not
  absorbed and keeps showing below. Where gradients from several consumers are summed, E = sum(E_i) +
  (u + u_64) * sum(|g_i|) + eta per addition. A node without a rule passes PyTorch's own gradients on
  (E = 0 after it).
- the float64 mirror is rounded to the graph dtype before it is compared (exact = bitwise equal after
  that rounding, reported separately), which adds half an ulp: u * |mirror| + eta.
- equal values match (equal infinities included), NaN matches NaN, anything else must be within the bound; a NaN
  or an infinity on one side only never matches (a rule must give what PyTorch's kernel gives at NaN and
  infinite inputs: relu passes the gradient through a NaN, abs' gradient at NaN is NaN, ...).
- complex gradients (PyTorch's convention: dL/dx + i dL/dy for z = x + iy) compare by modulus.

Every quantity on the right is computed from the same data, in float64 arrays (or float32 ones rounded up:
below), in both modes.

What the cost is (benchmarks/bench_mirror.py): per node the rule runs on PyTorch's incoming gradient (the
local check, float64), on the mirror's own (skipped where the two are equal: the same outputs) and on magnitudes
(skipped for the rules in bounds.MOVES_ONLY, which only move gradient elements: B = 0). In a float32 (or lower)
graph two of the three run in float32 without weakening anything: the mirror's own gradient comes by linearity as
local + rule(d), rule(d) in float32 (d is a few roundings of the graph dtype, and E carries |mine - local| as
computed: driver.Step._mine32), and the matrix products and convolutions on magnitudes multiply the exact float32
magnitudes in float32, the result kept rounded up (bounds.NOTE [float32 magnitudes]: at most a factor
(1 + gamma_k(u32))^2 looser). Each node is judged as it is run (driver.Step) and its arrays dropped; PyTorch's
gradients are read in its own memory (float32 as float32: their arithmetic with float64 is float64). A comparison
subtracts once and adds the rounding allowance only where the bound alone is exceeded (it only adds to it: the
verdict is the same); a few elements are compared in Python floats, big arrays chunk by chunk, each big slot in one
pass (B, the local check, the mirror's own gradient and E together: driver.Step._out), with the same arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..capture import read_only
from .bounds import CHUNK, REAL_OF, UNDERFLOW, chunks, rounding, unit_roundoff
from .driver import unreadable
from .scalar import floats, numbers
from .table import NO_RULE, RULES, round_to


def _rounded(m: np.ndarray, dtype: str) -> np.ndarray:
    if np.iscomplexobj(m):
        return _rounded(m.real, REAL_OF.get(dtype, dtype)) + 1j * _rounded(m.imag, REAL_OF.get(dtype, dtype))
    if dtype == "float64" or dtype not in ("float32", "float16", "bfloat16"):
        return m
    return round_to(dtype, m)


def _compare(m, t, bound, dtype: str) -> tuple[str, bool, float, float] | None:
    """(status, exact, max_abs, max_rel) of the mirror's `m` against PyTorch's `t`, within `bound`.
    Floating-point warnings are the caller's to silence."""
    if np.iscomplexobj(m) or np.iscomplexobj(t):
        return _compare_special(*_shaped(np.asarray(m), np.asarray(t)), None, bound, dtype)
    m, t = floats(m), numbers(t)
    if m.shape != t.shape:
        try:
            m = np.broadcast_to(m, t.shape)
        except ValueError:
            return "mismatch", False, math.inf, math.inf
    if t.size <= SMALL:
        return _compare_small(m, t, bound, dtype)
    if t.size > CHUNK:
        return _compare_chunks(m, t, bound, dtype)
    # the mirror rounded to the graph's dtype (a float32 copy is that rounding, and half the memory)
    r = m.astype(np.float32) if dtype == "float32" else np.asarray(_rounded(m, dtype))
    diff = np.asarray(np.subtract(r, t, dtype=np.float64))
    diff = np.abs(diff, out=diff)
    max_abs = float(np.max(diff, initial=0.0))
    if not math.isfinite(max_abs):  # an infinity or a NaN somewhere
        return _compare_special(m, t, np.asarray(r, dtype=np.float64), bound, dtype)
    ok = True
    if max_abs > 0:  # the full allowance only where the bound alone is exceeded (it only adds to it)
        b = 0.0 if bound is None else np.broadcast_to(bound, t.shape)
        over = diff > b  # a NaN bound admits anything, as an infinite one
        if over.any():
            extra = rounding(np.maximum(np.abs(r[over].astype(np.float64)), np.abs(m[over])), dtype)
            ok = not np.any(diff[over] > (b[over] if np.ndim(b) else b) + extra)
    scale = max(float(np.max(t, initial=0.0)), -float(np.min(t, initial=0.0)))
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
    return ("match" if ok else "mismatch"), max_abs == 0, max_abs, max_rel


def _compare_chunks(m, t, bound, dtype: str) -> tuple[str, bool, float, float]:
    """_compare's array path, chunk by chunk (bounds.chunks): the same arithmetic on each chunk."""
    judge = _Judge(dtype)
    it = chunks(m, t, bound)
    with it:
        for mc, tc, bc in it:
            if not judge.add(mc, tc, bc):  # an infinity or a NaN somewhere
                return _compare_special(m, t, np.asarray(_rounded(m, dtype), dtype=np.float64), bound, dtype)
    return judge.result()


class _Judge:
    """_compare's array path over chunks: `add` each (mirror, torch, bound) chunk (False: an infinity or a NaN,
    _compare_special decides), then `result`."""

    __slots__ = ("dtype", "max_abs", "ok", "hi", "lo")

    def __init__(self, dtype: str):
        self.dtype, self.max_abs, self.ok, self.hi, self.lo = dtype, 0.0, True, 0.0, 0.0

    def add(self, mc, tc, bc) -> bool:
        dtype = self.dtype
        r = mc.astype(np.float32) if dtype == "float32" else np.asarray(_rounded(mc, dtype))
        diff = np.subtract(r, tc, dtype=np.float64)
        diff = np.abs(diff, out=diff)
        top = float(diff.max())
        if not math.isfinite(top):
            return False
        self.max_abs = max(self.max_abs, top)
        if top > 0 and self.ok:
            over = diff > bc  # a NaN bound admits anything, as an infinite one
            if over.any():
                extra = rounding(np.maximum(np.abs(r[over].astype(np.float64)), np.abs(mc[over])), dtype)
                self.ok = not np.any(diff[over] > (bc[over] if bc.ndim else bc) + extra)
        self.hi, self.lo = max(self.hi, float(tc.max())), min(self.lo, float(tc.min()))
        return True

    def result(self) -> tuple[str, bool, float, float]:
        max_abs, scale = self.max_abs, max(self.hi, -self.lo)
        max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
        return ("match" if self.ok else "mismatch"), max_abs == 0, max_abs, max_rel


SMALL = 16  # arrays up to this size are compared element by element in Python floats (numpy's calls cost more)


def _compare_small(m, t, bound, dtype: str) -> tuple[str, bool, float, float]:
    """_compare on a few elements, with the same arithmetic (Python floats are IEEE doubles)."""
    rs = (m.astype(np.float32) if dtype == "float32" else np.asarray(_rounded(m, dtype))).ravel().tolist()
    ts, ms = t.ravel().tolist(), m.ravel().tolist()
    bs = [0.0] * len(ts) if bound is None else \
        (bound if np.shape(bound) == t.shape else np.broadcast_to(bound, t.shape)).ravel().tolist()
    u, eta = (unit_roundoff(dtype), UNDERFLOW[dtype]) if dtype in UNDERFLOW and dtype != "float64" else (None, 0.0)
    exact, ok, max_abs, scale = True, True, 0.0, 0.0
    for r, x, mm, b in zip(rs, ts, ms, bs):
        if x == x and abs(x) != math.inf and abs(x) > scale:
            scale = abs(x)
        if r == x or (r != r and x != x):
            continue
        exact = False
        if not (math.isfinite(r) and math.isfinite(x)):  # a NaN or an infinity on one side only
            ok = False
        d = abs(r - x)
        if d != d:
            d = math.inf
        if d > max_abs:
            max_abs = d
        if u is not None:
            big = math.nan if r != r or mm != mm else max(abs(r), abs(mm))
            b = b + (u * big + eta)
        if not d <= (math.inf if b != b else b):
            ok = False
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
    return ("match" if ok else "mismatch"), exact, max_abs, max_rel


def _shaped(m, t):
    if m.shape != t.shape:
        try:
            m = np.broadcast_to(m, t.shape)
        except ValueError:
            pass
    return m, t


def _compare_special(m, t, r, bound, dtype: str) -> tuple[str, bool, float, float]:
    """_compare where infinities or NaNs occur, or complex numbers (compared by modulus, each rounded in its two
    parts; `r` None: rounded here): equal values match, NaN matches NaN, a NaN or an infinity on one side only
    never matches."""
    if m.shape != t.shape:
        return "mismatch", False, math.inf, math.inf
    r = np.asarray(_rounded(m, dtype)) if r is None else r
    exact = bool(np.array_equal(r, t, equal_nan=True))
    with np.errstate(all="ignore"):
        same = (r == t) | (np.isnan(r) & np.isnan(t))
        diff = np.where(same, 0.0, np.abs(r - t))
        diff = np.where(np.isnan(diff), np.inf, diff)
        b = np.zeros(t.shape) if bound is None else np.broadcast_to(bound, t.shape)
        # the mirror rounded to the graph's dtype (a complex number: its two parts)
        b = b + (1 + np.iscomplexobj(r)) * rounding(np.maximum(np.abs(r), np.abs(m)), dtype)
        b = np.where(np.isnan(b), np.inf, b)
        lone = ~same & (~np.isfinite(r) | ~np.isfinite(t))  # NOTE [bound]: never within a bound
        ok = bool(np.all((diff <= b) & ~lone))
    max_abs = float(np.max(diff, initial=0.0))
    scale = float(np.max(np.abs(np.where(np.isfinite(t), t, 0.0)), initial=0.0))
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
    return ("match" if ok else "mismatch"), exact, max_abs, max_rel


def _merge(checks):
    checks = [c for c in checks if c is not None]
    if len(checks) < 2:
        return checks[0] if checks else None
    return ("mismatch" if any(c[0] == "mismatch" for c in checks) else "match", all(c[1] for c in checks),
            max(c[2] for c in checks), max(c[3] for c in checks))


def _row(nid, type_, name, kind, local, e2e, note, bound=None, e2e_bound=None) -> dict:
    status, exact, max_abs, max_rel = local if local is not None else ("unmirrored", False, 0.0, 0.0)
    e = e2e if e2e is not None else (None, None, None, None)
    return {"id": nid, "type": type_, "name": name or nid, "kind": kind, "status": status, "exact": exact,
            "max_abs": max_abs, "max_rel": max_rel, "bound": bound, "e2e_status": e[0], "e2e_exact": e[1],
            "e2e_max_abs": e[2], "e2e_bound": e2e_bound, "note": note}


def _largest(xs) -> float | None:
    best = None
    for x in xs:
        if x is None or not np.size(x):
            continue
        if isinstance(x, np.ndarray) and x.size <= SMALL:  # as np.max(x, initial=0.0), NaN included
            vals = x.ravel().tolist()
            v = math.nan if any(a != a for a in vals) else max(0.0, *vals)
        else:
            v = float(np.max(x, initial=0.0))
        best = v if best is None else max(best, v)
    return best


def verdict_rows(tr, order, ops, step, seen_in, seen_out, leaf_in, grads) -> list:
    rows = []
    for nid in order:
        op = ops.get(nid)
        if op is None or nid not in seen_in:
            continue
        local, bound, e2e, e2e_bound = step.verdicts.get(nid, (None, None, None, None))
        note = step.notes.get(nid) or (None if op.type in RULES else  # a known reason's first clause, or none
                                       NO_RULE.get(op.type, "no rule for this node type").split(": ")[0])
        rows.append(_row(nid, op.type, op.name, "node", local, e2e, note, bound, e2e_bound))
    for nid in tr.graph:  # leaves in the order the trace walked them
        d = tr.graph.nodes[nid]
        if not d["is_leaf"]:
            continue
        f, t, note = grads.get((nid, 0)), leaf_in.get(nid), unreadable(d)
        t = None if t is None else read_only(t) if isinstance(t, torch.Tensor) else t
        if t is None and f is not None and nid in leaf_in:  # PyTorch's undefined gradient is 0
            t = np.zeros(np.shape(f.g))
        with np.errstate(all="ignore"):
            check = None if f is None or t is None or note else _compare(f.g, t, f.e, d["dtype"])
        rows.append(_row(nid, "AccumulateGrad", d["param"], "leaf", check, check, note,
                         None if f is None else _largest([f.e]), None if f is None else _largest([f.e])))
    return rows


def divergence(ops, rows) -> list[str]:
    """Nodes (and leaves) whose end-to-end input differs although every consumer's input and rule agreed:
    something between them, not a rule, changed PyTorch's gradient."""
    consumers: dict = {}
    for op in ops.values():
        for dest in op.nexts:
            if dest is not None:
                consumers.setdefault(dest[0], []).append(op.id)
    local = {r["id"]: r["status"] for r in rows}
    e2e = {r["id"]: r["e2e_status"] for r in rows}
    return [r["id"] for r in rows if r["e2e_status"] == "mismatch"
            and all(e2e.get(c) != "mismatch" and local.get(c) != "mismatch" for c in consumers.get(r["id"], ()))]
