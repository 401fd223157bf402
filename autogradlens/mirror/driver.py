"""The mirror's driver: the graph as the mirror reads it (`ops`), its own backward pass (`replay`, the shape of
tinygrad's ``compute_gradient``: a rule table and a short loop), and `Step`, which runs one node's rule on values
and on magnitudes and keeps what the verdicts need. How the bounds are carried: verdicts.py (NOTE [bound])."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .._torch import is_freed, is_stale, saved_names, saved_value
from ..capture import to_numpy
from ..errors import LensRuntimeError
from .bounds import UNDERFLOW, UNIT_ROUNDOFF, Mag, MagCtx, gamma, local_bound, unit_roundoff
from .scalar import as_values, floats
from .table import RULES, Ctx, Unsupported, sum_to

# A rule that cannot run on magnitudes (bounds.Mag) falls back to a relative bound of this many roundings
# of the graph dtype on the larger of the two results (a row note says so; tests keep every rule off it).
FALLBACK_UNITS = 64


_ETA = {UNIT_ROUNDOFF[d]: UNDERFLOW[d] for d in UNIT_ROUNDOFF}  # unit roundoff -> underflow error, per dtype


_U64 = UNIT_ROUNDOFF["float64"]


class Op(NamedTuple):
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


FREED = "saved tensors freed by backward()"


def _read_saved(fn, nid: str, slots: list, dtype: str, freed_ok: bool = False) -> dict:
    """Saved tensors as numpy arrays; a clear error when backward() freed them (Unsupported(FREED) with
    `freed_ok`) or they changed in place. A Python number saved as a 0-d float64 tensor enters a `dtype`
    computation rounded to `dtype`."""
    out = {}
    for a in slots:
        try:
            v = saved_value(fn, a)
        except RuntimeError as e:
            if is_freed(e) and freed_ok:
                raise Unsupported(FREED) from None
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


def unreadable(d: dict) -> str | None:
    """Why the gradients of a node (or leaf) cannot be checked, from its trace attributes, else None."""
    if d["device"] == "meta":
        return "a meta tensor (no values)"
    if (d["dtype"] or "").startswith("complex"):
        return "complex tensors"
    return None


def lowest(dtypes) -> str:
    return max((d for d in dtypes if d in ("float64", "float32", "float16", "bfloat16")),
               key=unit_roundoff, default="float64")


def read_ops(tr, walk, freed_ok: bool = False) -> dict:
    """Op node id -> Op, for every node with a grad_fn (leaves are not ops). With `freed_ok`, a node whose saved
    tensors backward() freed gets the note FREED instead of raising."""
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
        saved, note = {}, unreadable(d)
        if d["type"] in RULES and note is None:
            try:
                saved = _read_saved(fn, nid, saved_names(fn, cache)[0], d["dtype"], freed_ok)
            except Unsupported as e:
                note = str(e)
        dtype, cuda = lowest([d["dtype"], *in_dtypes]), (d["device"] or "").startswith("cuda")
        ops[nid] = Op(nid, d["type"], d.get("name"), nexts, in_shapes, in_dtypes, list(d["outputs"]),
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


def consumers_first(order: list, nexts: list, ids: dict) -> list[str]:
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


def run_rule(op: Op, gs, ctx=Ctx, saved=None, scalar=False) -> list:
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


class Step:
    """Runs each node for `replay` and records what the verdicts need (values, bounds, notes)."""

    def __init__(self, seen_in, seen_out, scalar: bool):
        self.seen_in, self.seen_out, self.scalar = seen_in, seen_out, scalar
        # complex gradients only pass between nodes left unmirrored (complex tensors): kept as they are
        self.wrap = (lambda a: a if np.iscomplexobj(a) else as_values(a)) if scalar else (lambda a: a)
        self.local: dict = {}     # id -> (mirror's outputs from PyTorch's inputs, bound per slot) or None
        self.incoming: dict = {}  # id -> the mirror's own incoming Flows
        self.notes: dict = {}

    def __call__(self, op: Op, flows: list):
        torch_in = self.seen_in.get(op.id)
        if torch_in is None:
            return None  # PyTorch did not run this node (no leaf needed it)
        self.incoming[op.id] = flows
        torch_out = self.seen_out[op.id]
        local = mine = None
        if op.type in RULES and op.note is None:
            try:
                local = run_rule(op, [None if g is None else self.wrap(g) for g in torch_in], scalar=self.scalar)
                mine = run_rule(op, [None if f is None else f.g for f in flows], scalar=self.scalar)
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
                Flow(m, np.broadcast_to(bound[i] + carried[i] + rounding(local[i], op.in_dtypes[i]), np.shape(m)),
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
                out = run_rule(op, ds)
            except Exception:  # noqa: BLE001 - the disagreement is reported upstream; keep the bound only
                return [0.0] * len(mine)
            return [0.0 if o is None else np.abs(floats(o)) for o in out]

    def _bound(self, op, torch_in, local, torch_out) -> list:
        """Per slot: the bound B on PyTorch's rounding at this node, from one run on magnitudes."""
        u = unit_roundoff(op.dtype)
        try:
            mags = run_rule(op, [None if g is None else Mag.grad(g) for g in torch_in], MagCtx, _mag_saved(op.saved))
            return [None if x is None else local_bound(x, op.dtype, op.tf32, op.atomic) for x in mags]
        except Exception as e:  # noqa: BLE001 - relative fallback, noted on the row
            self.notes[op.id] = f"bound: relative fallback ({type(e).__name__}: {e})"
            return [None if m is None or t is None else
                    gamma(FALLBACK_UNITS, u) * np.maximum(np.abs(floats(m)), np.abs(t))
                    for m, t in zip(local, torch_out)]


def rounding(x, dtype) -> np.ndarray | float:
    """What the local check allows for rounding the float64 mirror to `dtype` (also carried on)."""
    if x is None or dtype in (None, "float64") or dtype not in UNDERFLOW:
        return 0.0
    return unit_roundoff(dtype) * np.abs(floats(x)) + UNDERFLOW[dtype]


def _difference(m: np.ndarray, t: np.ndarray) -> np.ndarray:
    """m - t, with 0 where they are equal (equal infinities included)."""
    with np.errstate(all="ignore"):
        return np.where((m == t) | (np.isnan(m) & np.isnan(t)), 0.0, m - t)


def _u_of(op: Op, slot: int) -> float:
    return unit_roundoff(lowest([op.in_dtypes[slot] or op.dtype]))
