"""`mirror`: re-derive the backward pass of the real graph, node by node, and compare with PyTorch.

Two checks, both reported:
- local: given PyTorch's incoming gradient to a node (captured with a node hook during a real
  backward), the mirror rule's outgoing gradients against PyTorch's;
- end to end: the mirror's own backward from the root(s) to every leaf against PyTorch's leaf gradients,
  with each node's incoming gradient compared on the way (which locates where they part).

The pieces: `_ops` reads the graph the trace built (plus the saved tensors of the live nodes), `replay` is
the driver (a rule table and a short loop, the shape of tinygrad's ``compute_gradient``), `_Step` runs one
node's rule on values and on magnitudes, and `_verdicts` compares, separately.

Verdicts come from a bound on rounding errors, not from a guessed tolerance (NOTE [bound]).

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
- equal values match (equal infinities included), NaN matches NaN, anything else must be within the bound.

Every quantity on the right is computed from the same data, in float64 arrays, in both modes.
"""

from __future__ import annotations

import gc
import math
from typing import NamedTuple

import numpy as np
import torch

from . import report
from ._torch import is_freed, is_stale, saved_names, saved_value
from .bounds import UNDERFLOW, UNIT_ROUNDOFF, Mag, MagCtx, gamma, local_bound, unit_roundoff
from .capture import capture, to_numpy
from .errors import LensRuntimeError, LensValueError
from .render import COLUMN, Drawable, trace_spec
from .rules import RULES, Ctx, Unsupported, sum_to
from .scalar import as_values, choose_mode, floats, running, scalar_cost
from .tracing import _dtype, _trace

__all__ = ["MirrorReport", "mirror", "replay"]

# A rule that cannot run on magnitudes (bounds.Mag) falls back to a relative bound of this many roundings
# of the graph dtype on the larger of the two results (a row note says so; tests keep every rule off it).
FALLBACK_UNITS = 64


_ETA = {UNIT_ROUNDOFF[d]: UNDERFLOW[d] for d in UNIT_ROUNDOFF}  # unit roundoff -> underflow error, per dtype
_U64 = UNIT_ROUNDOFF["float64"]


# ----------------------------------------------------------------------------- reading the graph

class _Op(NamedTuple):
    """One op node, as the mirror needs it (from the Trace's node attributes and the live node)."""
    id: str
    type: str
    name: str | None
    nexts: list        # per next_functions slot: (child id, input_nr) or None
    in_shapes: list    # per slot: the forward input's shape (None where no gradient flows)
    in_dtypes: list
    out_shapes: list   # per forward output
    dtype: str         # the lowest precision among inputs and outputs: its unit roundoff bounds rounding
    out_dtype: str     # of the gradients flowing in
    attrs: dict
    saved: dict
    note: str | None
    tf32: bool = False  # a float32 CUDA convolution or matrix product that may run in TensorFloat-32
    atomic: bool = False  # a half-precision CUDA node whose backward adds with atomics in the dtype


def _np(t: torch.Tensor) -> np.ndarray:
    if t.layout != torch.strided:
        raise Unsupported(f"a {str(t.layout).removeprefix('torch.')} saved tensor")
    if t.device.type == "meta":
        raise Unsupported("a meta tensor (no values)")
    if t.is_complex():
        raise Unsupported("complex tensors")
    return to_numpy(t)


def _read_saved(fn, nid: str, slots: list, dtype: str) -> dict:
    """Saved tensors as numpy arrays; a clear error when backward() freed them or they changed in place.
    A Python number saved as a 0-d float64 tensor enters a `dtype` computation rounded to `dtype`."""
    out = {}
    for a in slots:
        try:
            v = saved_value(fn, a)
        except RuntimeError as e:
            if is_freed(e):
                raise LensRuntimeError(
                    "mirror needs the tensors autograd saved, and backward() has freed them: call "
                    "lens.mirror(loss) before loss.backward(), or backward(retain_graph=True)") from None
            if is_stale(e):
                raise LensRuntimeError(
                    f"{nid}: a saved tensor was changed in place after it was saved ({str(e).split('. Hint')[0]}); "
                    "mirror the graph before optimizer.step() or other in-place updates") from None
            raise
        if isinstance(v, tuple):
            out[a] = tuple(None if x is None else _np(x) for x in v)
        elif v is not None:
            if v.ndim == 0 and v.dtype == torch.float64 and dtype in ("float32", "float16", "bfloat16"):
                v = v.to(getattr(torch, dtype))
            out[a] = _np(v)
    return out


def _unreadable(d: dict) -> str | None:
    """Why the gradients of a node (or leaf) cannot be checked, from its trace attributes, else None."""
    if d["device"] == "meta":
        return "a meta tensor (no values)"
    if (d["dtype"] or "").startswith("complex"):
        return "complex tensors"
    return None


def _lowest(dtypes) -> str:
    return max((d for d in dtypes if d in ("float64", "float32", "float16", "bfloat16")),
               key=unit_roundoff, default="float64")


def _ops(tr, walk) -> dict:
    """Op node id -> _Op, for every node with a grad_fn (leaves are not ops)."""
    g, cache, ops, tf32 = tr.graph, {}, {}, _tf32_types()
    for fn, nf in zip(walk.order, walk.nexts):
        nid = walk.ids[fn]
        d = g.nodes[nid]
        if d["is_leaf"]:
            continue
        nexts = [None if f is None else (walk.ids[f], nr) for f, nr in nf]
        kids = [None if x is None else g.nodes[x[0]] for x in nexts]
        in_shapes = [None if k is None else k["outputs"][nr] for k, (_, nr) in
                     ((k, x if x else (None, 0)) for k, x in zip(kids, nexts))]
        in_dtypes = [None if k is None else k["dtype"] for k in kids]
        saved, note = {}, _unreadable(d)
        if d["type"] in RULES and note is None:
            try:
                saved = _read_saved(fn, nid, saved_names(fn, cache)[0], d["dtype"])
            except Unsupported as e:
                note = str(e)
        dtype, cuda = _lowest([d["dtype"], *in_dtypes]), (d["device"] or "").startswith("cuda")
        ops[nid] = _Op(nid, d["type"], d.get("name"), nexts, in_shapes, in_dtypes, list(d["outputs"]),
                       dtype, d["dtype"] or "float64", d["attrs"], saved, note,
                       cuda and dtype == "float32" and d["type"] in tf32,
                       cuda and dtype in ("float16", "bfloat16") and d["type"].startswith(_ATOMIC))
    return ops


# Forward ops whose CUDA backward adds into its result with atomicAdd in the tensor's own dtype.
_ATOMIC = ("Upsample", "IndexSelect", "IndexBackward", "Gather", "MaxPool", "AdaptiveAvgPool", "AdaptiveMaxPool",
           "GridSampler", "EmbeddingBag", "Cummax", "Cummin")  # cummax/cummin: a scatter_add back along the dim
_TF32_CONV = frozenset({"ConvolutionBackward0", "ConvolutionBackwardBackward0"})
_TF32_MATMUL = frozenset({"MmBackward0", "AddmmBackward0", "BmmBackward0", "BaddbmmBackward0"})


def _tf32_types() -> frozenset:
    """Node types whose float32 CUDA kernels may use TensorFloat-32 under the current settings (NOTE [bound])."""
    return ((_TF32_CONV if torch.backends.cudnn.allow_tf32 else frozenset())
            | (_TF32_MATMUL if torch.backends.cuda.matmul.allow_tf32 else frozenset()))


# ----------------------------------------------------------------------------- the driver

class Flow(NamedTuple):
    """A gradient on its way: ``g`` (the mirror's value), ``e`` (a bound on its distance to PyTorch's),
    ``a`` (the sum of the magnitudes of the parts added into it) and ``u`` (unit roundoff of the sum)."""
    g: object
    e: np.ndarray
    a: np.ndarray
    u: float

    def __add__(self, o: Flow) -> Flow:  # the engine's sum and the mirror's each round once
        a = self.a + o.a
        return Flow(self.g + o.g, self.e + o.e + (self.u + _U64) * a + _ETA[self.u], a, max(self.u, o.u))


def replay(order: list, ops: dict, seeds: dict, step) -> dict:
    """The mirror's own backward pass. `order` lists node ids consumers first, `seeds` maps
    (node id, output nr) to the root gradients, ``step(op, incoming)`` returns one gradient per
    next_functions slot (or None). Gradients reaching the same input add up, as in the engine.
    Returns what reached the leaves (and nodes `step` declined), keyed (node id, output nr)."""
    grads = dict(seeds)
    for nid in order:
        op = ops.get(nid)
        if op is None:
            continue  # a leaf: its gradient stays in `grads`
        incoming = [grads.pop((nid, k), None) for k in range(max(1, len(op.out_shapes)))]
        if all(g is None for g in incoming):
            continue
        for g, dest in zip(step(op, incoming) or (), op.nexts):
            if g is not None and dest is not None:
                grads[dest] = g if dest not in grads else grads[dest] + g
    return grads


def _consumers_first(order: list, nexts: list, ids: dict) -> list[str]:
    """Node ids with every consumer before its producers: Kahn's algorithm over the walk's DFS order (the
    earliest-walked ready node first), so rows read from the loss down, deterministically."""
    pos = {fn: i for i, fn in enumerate(order)}
    indeg = [0] * len(order)
    for nf in nexts:
        for f, _ in nf:
            if f is not None:
                indeg[pos[f]] += 1
    ready, out = sorted((i for i, d in enumerate(indeg) if d == 0), reverse=True), []
    while ready:
        i = ready.pop()
        out.append(ids[order[i]])
        for f, _ in nexts[i]:
            if f is not None:
                j = pos[f]
                indeg[j] -= 1
                if indeg[j] == 0:
                    ready.append(j)
    return out


# ----------------------------------------------------------------------------- one node: values and bounds

def _run(op: _Op, gs, ctx=Ctx, saved=None, scalar=False) -> list:
    """The rule's gradients per slot, each summed to its input's shape (as the engine does)."""
    if all(g is None for g in gs):
        return [None] * len(op.nexts)
    c = ctx(op.type, gs, op.saved if saved is None else saved, op.attrs, op.in_shapes, op.out_shapes, scalar,
            op.in_dtypes)
    with np.errstate(all="ignore"):
        out = RULES[op.type](c)
        if len(out) != len(op.nexts):
            raise Unsupported(f"rule for {op.type} returned {len(out)} gradients for {len(op.nexts)} inputs")
        return [None if o is None or s is None or op.nexts[i] is None else
                sum_to(o if isinstance(o, Mag) else np.asarray(o), s)
                for i, (o, s) in enumerate(zip(out, op.in_shapes))]


def _mag_saved(saved: dict) -> dict:
    def one(x):
        return x if x is None or x.dtype.kind != "f" else Mag.of(x)
    return {k: tuple(one(x) for x in v) if isinstance(v, tuple) else one(v) for k, v in saved.items()}


class _Step:
    """Runs each node for `replay` and records what the verdicts need (values, bounds, notes)."""

    def __init__(self, seen_in, seen_out, scalar: bool):
        self.seen_in, self.seen_out, self.scalar = seen_in, seen_out, scalar
        # complex gradients only pass between nodes left unmirrored (complex tensors): kept as they are
        self.wrap = (lambda a: a if np.iscomplexobj(a) else as_values(a)) if scalar else (lambda a: a)
        self.local: dict = {}     # id -> (mirror's outputs from PyTorch's inputs, bound per slot) or None
        self.incoming: dict = {}  # id -> the mirror's own incoming Flows
        self.notes: dict = {}

    def __call__(self, op: _Op, flows: list):
        torch_in = self.seen_in.get(op.id)
        if torch_in is None:
            return None  # PyTorch did not run this node (no leaf needed it)
        self.incoming[op.id] = flows
        torch_out = self.seen_out[op.id]
        local = mine = None
        if op.type in RULES and op.note is None:
            try:
                local = _run(op, [None if g is None else self.wrap(g) for g in torch_in], scalar=self.scalar)
                mine = _run(op, [None if f is None else f.g for f in flows], scalar=self.scalar)
            except Unsupported as e:  # a case the rule does not handle: unmirrored, with the reason
                self.notes[op.id] = str(e)
                local = mine = None
            except Exception as e:  # noqa: BLE001 - a rule that fails is a row note, never a crash
                self.notes[op.id] = f"rule failed: {type(e).__name__}: {e}"
                local = mine = None
        elif op.note is not None:
            self.notes[op.id] = op.note
        if mine is None:  # no rule: PyTorch's own gradients flow on, exactly what PyTorch has
            return [None if t is None or d is None else
                    Flow(self.wrap(t), np.zeros(np.shape(t)), np.abs(t), _u_of(op, i))
                    for i, (t, d) in enumerate(zip(torch_out, op.nexts))]
        bound = self._bound(op, torch_in, local, torch_out)
        self.local[op.id] = (local, bound)
        carried = self._carried(op, flows, torch_in, mine, local)
        return [None if m is None else
                Flow(m, np.broadcast_to(bound[i] + carried[i] + _rounding(local[i], op.in_dtypes[i]), np.shape(m)),
                     np.abs(floats(m)), _u_of(op, i))
                for i, m in enumerate(mine)]

    def _carried(self, op, flows, torch_in, mine, local) -> list:
        """|rule(d)| per slot, d = the mirror's incoming gradient minus PyTorch's (NOTE [bound]): by linearity
        rule(G_mirror) - rule(G_torch); where d exceeds the incoming bound (a real disagreement upstream),
        only its admissible part min(|d|, E_in) is carried, so the disagreement is not absorbed."""
        ds, clipped = [], False
        for f, t in zip(flows, torch_in):
            if f is None or t is None:
                ds.append(None if f is None else np.zeros(np.shape(f.e)))
                continue
            d = _difference(floats(f.g), t)
            allowed = f.e + unit_roundoff(op.out_dtype) * np.abs(floats(f.g)) + UNDERFLOW.get(op.out_dtype, 0.0)
            if np.any(np.abs(d) > allowed):
                clipped, d = True, np.clip(d, -allowed, allowed)
            ds.append(d)
        with np.errstate(all="ignore"):
            if not clipped:
                return [0.0 if m is None else np.abs(_difference(floats(m), floats(c))) for m, c in zip(mine, local)]
            try:
                out = _run(op, ds)
            except Exception:  # noqa: BLE001 - the disagreement is reported upstream; keep the bound only
                return [0.0] * len(mine)
            return [0.0 if o is None else np.abs(floats(o)) for o in out]

    def _bound(self, op, torch_in, local, torch_out) -> list:
        """Per slot: the bound B on PyTorch's rounding at this node, from one run on magnitudes."""
        u = unit_roundoff(op.dtype)
        try:
            mags = _run(op, [None if g is None else Mag.grad(g) for g in torch_in], MagCtx, _mag_saved(op.saved))
            return [None if x is None else local_bound(x, op.dtype, op.tf32, op.atomic) for x in mags]
        except Exception as e:  # noqa: BLE001 - relative fallback, noted on the row
            self.notes[op.id] = f"bound: relative fallback ({type(e).__name__}: {e})"
            return [None if m is None or t is None else
                    gamma(FALLBACK_UNITS, u) * np.maximum(np.abs(floats(m)), np.abs(t))
                    for m, t in zip(local, torch_out)]


def _rounding(x, dtype) -> np.ndarray | float:
    """What the local check allows for rounding the float64 mirror to `dtype` (also carried on)."""
    if x is None or dtype in (None, "float64") or dtype not in UNDERFLOW:
        return 0.0
    return unit_roundoff(dtype) * np.abs(floats(x)) + UNDERFLOW[dtype]


def _difference(m: np.ndarray, t: np.ndarray) -> np.ndarray:
    """m - t, with 0 where they are equal (equal infinities included)."""
    with np.errstate(all="ignore"):
        return np.where((m == t) | (np.isnan(m) & np.isnan(t)), 0.0, m - t)


def _u_of(op: _Op, slot: int) -> float:
    return unit_roundoff(_lowest([op.in_dtypes[slot] or op.dtype]))


# ----------------------------------------------------------------------------- verdicts

def _rounded(m: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float64" or dtype not in ("float32", "float16", "bfloat16"):
        return m
    return torch.from_numpy(np.array(m, dtype=np.float64)).to(getattr(torch, dtype)).to(torch.float64).numpy()


def _compare(m, t, bound, dtype: str) -> tuple[str, bool, float, float] | None:
    """(status, exact, max_abs, max_rel) of the mirror's `m` against PyTorch's `t`, within `bound`."""
    if np.iscomplexobj(m) or np.iscomplexobj(t):
        return None  # complex gradients are passed on, not checked
    m, t = floats(m), floats(t)
    if m.shape != t.shape:
        try:
            m = np.broadcast_to(m, t.shape)
        except ValueError:
            return "mismatch", False, math.inf, math.inf
    r = _rounded(m, dtype)
    exact = bool(np.array_equal(r, t, equal_nan=True))
    with np.errstate(all="ignore"):
        same = (r == t) | (np.isnan(r) & np.isnan(t))
        diff = np.where(same, 0.0, np.abs(r - t))
        diff = np.where(np.isnan(diff), np.inf, diff)
        b = np.zeros(t.shape) if bound is None else np.broadcast_to(bound, t.shape)
        b = b + _rounding(np.maximum(np.abs(r), np.abs(m)), dtype)  # the mirror rounded to the graph's dtype
        b = np.where(np.isnan(b), np.inf, b)
        ok = bool(np.all(diff <= b))
        max_abs = float(np.max(diff, initial=0.0))
        scale = float(np.max(np.abs(np.where(np.isfinite(t), t, 0.0)), initial=0.0))
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else math.inf)
    return ("match" if ok else "mismatch"), exact, max_abs, max_rel


def _merge(checks):
    checks = [c for c in checks if c is not None]
    if not checks:
        return None
    return ("mismatch" if any(c[0] == "mismatch" for c in checks) else "match", all(c[1] for c in checks),
            max(c[2] for c in checks), max(c[3] for c in checks))


# ----------------------------------------------------------------------------- the report

class MirrorReport(Drawable):
    """What the mirror found: ``ok``, ``rows`` (one per node and one per leaf), ``unmirrored``.

    Each row is a dict: ``id``, ``type``, ``name`` (the node's name: a parameter name for leaves, the
    ``params`` name of an intermediate tensor, else the id), ``kind`` ("node"/"leaf"), ``status`` (match /
    mismatch / unmirrored), ``exact`` (bitwise equal in the graph's dtype), ``max_abs``, ``max_rel``,
    ``bound`` (the largest allowed difference; the local check for nodes, the end-to-end check for
    leaves) and, for nodes, ``e2e_status`` / ``e2e_exact`` / ``e2e_max_abs`` / ``e2e_bound`` (the mirror's
    own incoming gradient at that node vs PyTorch's: for a named intermediate, the gradient of the loss with
    respect to that tensor, as in the makemore lecture's ``cmp``), ``note`` (why a node is unmirrored).
    ``grads`` maps each leaf's name to the mirror's own gradient (a float64 numpy array), ``diverges_at``
    lists where the mirror and PyTorch part although every rule agreed, ``mode_reason`` why this mode.
    """

    def __init__(self, rows, trace, mode, diverges_at, grads=None, mode_reason=""):
        self.rows = rows
        self.grads = grads or {}  # leaf name -> the mirror's own end-to-end gradient (float64 array)
        self.trace = trace
        self.mode = mode
        self.mode_reason = mode_reason
        self.diverges_at = diverges_at

    @property
    def ok(self) -> bool:
        return all(r["status"] != "mismatch" and r.get("e2e_status") != "mismatch" for r in self.rows)

    @property
    def unmirrored(self) -> list[str]:
        return sorted({r["type"] for r in self.rows if r["status"] == "unmirrored"})

    def counts(self) -> dict:
        out = {"match": 0, "mismatch": 0, "unmirrored": 0, "exact": 0}
        for r in self.rows:
            out[r["status"]] += 1
            out["exact"] += bool(r["exact"])
        return out

    def to_text(self) -> str:
        """A table in the spirit of the makemore lecture's `cmp`: name | exact | approximate | maxdiff.

        Leaves and named intermediates show the gradient of the loss with respect to them (end to end);
        other nodes show the local check of their rule."""
        w = max([len(r["name"]) for r in self.rows] + [10])
        lines = [f"{'name':{w}s} | exact | approximate | maxdiff   | check"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            named = r["kind"] == "node" and r["name"] != r["id"] and r["e2e_status"] is not None
            if r["kind"] == "leaf" or named:
                st, ex, ma = r["e2e_status"] or r["status"], r["e2e_exact"], r["e2e_max_abs"] or 0.0
                check = "leaf (end to end)" if r["kind"] == "leaf" else f"d{r['name']} (end to end)"
                if named and r["status"] != "match":
                    check += f"; local {r['status']}"
            else:
                st, ex, ma = r["status"], r["exact"], r["max_abs"]
                check = "local"
                if r.get("e2e_status") == "mismatch":
                    check += "; end-to-end input differs"
            if r.get("note"):
                check += f" ({r['note']})"
            approx = {"match": "True", "mismatch": "FALSE", "unmirrored": "n/a"}.get(st, "n/a")
            lines.append(f"{r['name']:{w}s} | {str(bool(ex)):5s} | {approx:11s} | {ma:.2e}  | {check}")
        c = self.counts()
        lines.append(f"{'ok' if self.ok else 'NOT OK'}: {c['match']} match ({c['exact']} bit-identical), "
                     f"{c['mismatch']} mismatch, {c['unmirrored']} unmirrored; mode={self.mode}"
                     + (f" ({self.mode_reason})" if self.mode_reason else ""))
        if self.unmirrored:
            lines.append("no rule (PyTorch's gradients passed through): " + ", ".join(self.unmirrored))
        for nid in self.diverges_at:
            lines.append(f"end to end, the mirror and PyTorch part at the gradient flowing into {nid}: "
                         "something between its consumers and it (a tensor hook?) changed PyTorch's gradient")
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts()
        return f"<MirrorReport {'ok' if self.ok else 'NOT OK'}: {c['match']} match, {c['mismatch']} mismatch, " \
               f"{c['unmirrored']} unmirrored>"

    def __str__(self) -> str:
        return self.to_text()

    def colors(self) -> dict:
        pal = {"match": "#a8e6a3", "mismatch": "#f4a6a6", "unmirrored": "#e5e5e5"}
        return {r["id"]: pal["mismatch" if r.get("e2e_status") == "mismatch" else r["status"]] for r in self.rows}

    # drawing (to_dot, to_graphviz, to_svg, render, notebook display) comes from render.Drawable
    _what = "a mirror report"

    def _spec(self, **opts) -> dict:
        """The traced graph coloured by verdict: green match, red mismatch, grey unmirrored."""
        spec = trace_spec(self.trace, colors=self.colors(), legend=False, **opts)
        spec["legend"] = [("match", "added", "box"), ("mismatch", "removed", "box"), ("unmirrored", "freed", "box")]
        return spec

    def _text_formats(self, **opts) -> dict:
        return {"txt": lambda: self.to_text() + "\n"}

    def _repr_html_(self) -> str:
        cols = ["name", "type", "status", "exact", "max_abs", "max_rel", "e2e_status"]
        return (f"<p><b>{report.esc(repr(self))}</b></p>" + report.table(self.rows, cols)
                + report.svg(self.to_svg(width=COLUMN)))


def _row(nid, type_, name, kind, local, e2e, note, bound=None, e2e_bound=None) -> dict:
    status, exact, max_abs, max_rel = local if local is not None else ("unmirrored", False, 0.0, 0.0)
    e = e2e if e2e is not None else (None, None, None, None)
    return {"id": nid, "type": type_, "name": name or nid, "kind": kind, "status": status, "exact": exact,
            "max_abs": max_abs, "max_rel": max_rel, "bound": bound, "e2e_status": e[0], "e2e_exact": e[1],
            "e2e_max_abs": e[2], "e2e_bound": e2e_bound, "note": note}


def _largest(xs) -> float | None:
    xs = [float(np.max(x, initial=0.0)) for x in xs if x is not None and np.size(x)]
    return max(xs) if xs else None


def _verdicts(tr, order, ops, step, seen_in, seen_out, leaf_in, grads) -> list:
    rows = []
    for nid in order:
        op = ops.get(nid)
        if op is None or nid not in seen_in:
            continue
        local, bounds = None, None
        if nid in step.local:
            mine, bounds = step.local[nid]
            checks = []
            for i, (m, t) in enumerate(zip(mine, seen_out[nid])):
                if t is None or op.nexts[i] is None:
                    continue
                checks.append(("mismatch", False, math.inf, math.inf) if m is None else
                              _compare(m, t, bounds[i], op.in_dtypes[i] or op.dtype))
            local = _merge(checks) or ("match", True, 0.0, 0.0)
        flows = step.incoming.get(nid) or []
        e2e = None if op.note else _merge([_compare(f.g, t, f.e, op.out_dtype) for f, t in zip(flows, seen_in[nid])
                                          if f is not None and t is not None])
        note = step.notes.get(nid) or (None if op.type in RULES else "no rule for this node type")
        rows.append(_row(nid, op.type, op.name, "node", local, e2e, note, _largest(bounds or []),
                         _largest([f.e for f in flows if f is not None])))
    for nid in tr.graph:  # leaves in the order the trace walked them
        d = tr.graph.nodes[nid]
        if not d["is_leaf"]:
            continue
        f, t, note = grads.get((nid, 0)), leaf_in.get(nid), _unreadable(d)
        check = None if f is None or t is None or note else _compare(f.g, t, f.e, d["dtype"])
        rows.append(_row(nid, "AccumulateGrad", d["param"], "leaf", check, check, note,
                         None if f is None else _largest([f.e]), None if f is None else _largest([f.e])))
    return rows


def _divergence(ops, rows) -> list[str]:
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


# ----------------------------------------------------------------------------- the mirror

def mirror(root, *, params=None, mode: str = "auto", backward: bool = False) -> MirrorReport:
    """Re-derive every node's gradient with micrograd-style rules and compare with PyTorch.

    `root` is the loss (or a list of roots, seeded as ``torch.autograd.backward(roots)`` seeds them).
    `params` names tensors, leaves and intermediates (``{"logprobs": logprobs, ...}``): rows use the names.
    `mode` is "scalar" (every element a :class:`Value`, micrograd exactly; small graphs), "tensor"
    (float64 arrays) or "auto". A difference is a mismatch only beyond a bound on the rounding error of
    the computation (see the module docstring). `.grad` is left untouched (``retain_grad()`` tensors
    included) unless ``backward=True``, which leaves ``.grad`` as ``root.backward()`` would.

    Raises:
        LensTypeError: `root` is not a tensor with a ``grad_fn`` (or `params` has the wrong type).
        LensValueError: an unknown `mode`, ``mode="scalar"`` over ``SCALAR_LIMIT`` Values, two different
            tensors under one name.
        LensRuntimeError: backward() has freed the saved tensors (mirror before it, or retain the graph),
            or a saved tensor was changed in place (mirror before ``optimizer.step()``).

    Example:
        >>> import torch, autogradlens as lens
        >>> w = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
        >>> r = lens.mirror((w.tanh() * w).sum(), params={"w": w})
        >>> r.ok, r.counts()["mismatch"], w.grad is None
        (True, 0, True)
    """
    if mode not in ("auto", "scalar", "tensor"):
        raise LensValueError(f"mode must be 'auto', 'scalar' or 'tensor', got {mode!r}")
    was = gc.isenabled()
    gc.disable()  # thousands of short-lived arrays, no cycles: a collection would only rescan the heap
    try:
        return _mirror(root, params, mode, backward)
    finally:
        if was:
            gc.enable()


def _mirror(root, params, mode: str, backward: bool) -> MirrorReport:
    tr, walk = _trace(root, params)  # one walk: the report's graph and the live nodes
    ops = _ops(tr, walk)
    mode, reason = choose_mode(mode, scalar_cost(list(ops.values())))
    scalar = mode == "scalar"
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    live = {fn: walk.ids[fn] for fn in walk.order}
    seen_in, seen_out, leaf_in = capture(
        roots, {fn: i for fn, i in live.items() if i in ops}, {fn: i for fn, i in live.items() if i not in ops},
        backward, keep=tuple(t for _, t in walk.named))
    seeds: dict = {}
    for r in roots:  # the same tensor twice counts twice, as in torch.autograd.backward
        key = (walk.ids[r.grad_fn], r.output_nr)
        f = Flow((as_values if scalar else np.asarray)(np.ones(tuple(r.shape))), np.zeros(tuple(r.shape)),
                 np.ones(tuple(r.shape)), unit_roundoff(_dtype(r.dtype)))
        seeds[key] = f if key not in seeds else seeds[key] + f
    order = _consumers_first(walk.order, walk.nexts, walk.ids)
    step = _Step(seen_in, seen_out, scalar)
    with running(len(ops), scalar) as tick:
        def ticking(op, incoming):
            tick()
            return step(op, incoming)
        grads = replay(order, ops, seeds, ticking)
    rows = _verdicts(tr, order, ops, step, seen_in, seen_out, leaf_in, grads)
    mine = {r["name"]: floats(grads[(r["id"], 0)].g) for r in rows
            if r["kind"] == "leaf" and (r["id"], 0) in grads and not r["note"]}
    return MirrorReport(rows, tr, mode, _divergence(ops, rows), mine, reason)
