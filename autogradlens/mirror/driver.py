"""The mirror's driver: the graph as the mirror reads it (`ops`), its own backward pass (`replay`, the shape of
tinygrad's ``compute_gradient``: a rule table and a short loop), and `Step`, which runs one node's rule on values
and on magnitudes, judges it and keeps only the verdicts. How the bounds are carried: verdicts.py (NOTE [bound]).

Memory: PyTorch's gradients come from capture as its tensors and are read when their node runs (float32 and
float64 ones in PyTorch's own memory, read-only); the saved tensors become float64 arrays only when their node
runs (`_Saved`: once per tensor, however many nodes saved it; float32 ones are also read as they are, for the
float32 runs) and are dropped after their last node."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .._torch import is_custom_function, is_freed, is_stale, saved_names, saved_value, version
from ..capture import read_only, to_numpy
from ..engine import consumer_counts
from ..errors import LensRuntimeError
from . import conv
from .bounds import (
    CHUNK,
    MOVES_ONLY,
    REAL_OF,
    UNDERFLOW,
    UNIT_ROUNDOFF,
    BoundOf,
    Mag,
    MagCtx,
    bound_of,
    chunks,
    gamma,
    local_bound,
    rounding,
    unit_roundoff,
)
from .scalar import as_values, floats, numbers
from .table import COMPLEX_RULES, CPU_KERNEL, CUSTOM_FUNCTION, NO_RULE, RULES, Ctx, Unsupported, sum_to

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


def _saved_tensor(t: torch.Tensor, seen: dict) -> torch.Tensor:
    """A saved tensor the rules can read, detached; the same tensor object for the same tensor saved by several
    nodes (`seen` maps what identifies it, its memory and version, to the first one, which it keeps alive)."""
    if t.layout != torch.strided:
        raise Unsupported(f"a {str(t.layout).removeprefix('torch.')} saved tensor")
    if t.device.type == "meta":
        raise Unsupported("a meta tensor (no values)")
    key = (t.data_ptr(), t.dtype, t.device, t.shape, t.stride(), version(t), t.is_conj(), t.is_neg())
    hit = seen.get(key)
    if hit is None:
        hit = seen[key] = t.detach()
    return hit


_NP_INT = {torch.bool: np.bool_, torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16,
           torch.int32: np.int32, torch.int64: np.int64}


def _as_array(t: torch.Tensor) -> np.ndarray:
    """A saved tensor as the rules read it: a read-only numpy array, float64 for floating tensors (one copy)."""
    d = t.resolve_neg()
    if d.numel() <= 16 and d.device.type == "cpu":  # a few numbers: through Python (exact), torch's calls cost more
        a = np.array(d.tolist(), dtype=np.float64 if d.is_floating_point() else _NP_INT.get(d.dtype, None))
        a = a.reshape(tuple(d.shape))  # (an empty tensor's list has lost its trailing sizes)
    else:
        if d.is_floating_point() and d.element_size() < 8 and not d.is_contiguous():
            d = d.contiguous()  # (reordered in its own dtype first, a transposed weight for one: half the bytes moved)
        a = (d.to("cpu", torch.float64, copy=True, memory_format=torch.contiguous_format).numpy(force=True)
             if d.is_floating_point() else to_numpy(d))
    a.flags.writeable = False  # shared by the nodes that saved it: a rule must not change it
    return a


FREED = "saved tensors freed by backward()"


def _read_saved(fn, nid: str, slots: list, dtype: str, seen: dict, freed_ok: bool = False) -> dict:
    """Saved tensors (the mirror turns them into numpy arrays when it runs the node: Step); a clear error when
    backward() freed them (Unsupported(FREED) with `freed_ok`) or they changed in place. A Python number saved as
    a 0-d float64 tensor enters a `dtype` computation rounded to `dtype`."""
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
            out[a] = tuple(None if x is None else _saved_tensor(x, seen) for x in v)
        elif v is not None:
            if v.ndim == 0 and v.dtype == torch.float64 and dtype in ("float32", "float16", "bfloat16"):
                v = v.to(getattr(torch, dtype))
            out[a] = _saved_tensor(v, seen)
    return out


def unreadable(d: dict) -> str | None:
    """Why the gradients of a node (or leaf) cannot be checked, from its trace attributes, else None."""
    if d["device"] == "meta":
        return "a meta tensor (no values)"
    return None


def lowest(dtypes) -> str:
    real = (REAL_OF.get(d, d) for d in dtypes)
    return max((d for d in real if d in ("float64", "float32", "float16", "bfloat16")), key=unit_roundoff,
               default="float64")


def is_complex(op) -> bool:
    return any((d or "").startswith("complex") for d in (op.out_dtype, *op.in_dtypes))


def read_ops(tr, walk, freed_ok: bool = False) -> dict:
    """Op node id -> Op, for every node with a grad_fn (leaves are not ops). With `freed_ok`, a node whose saved
    tensors backward() freed gets the note FREED instead of raising."""
    g, cache, ops, tf32, seen = tr.graph, {}, {}, _tf32_types(), {}
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
                saved = _read_saved(fn, nid, saved_names(fn, cache)[0], d["dtype"], seen, freed_ok)
            except Unsupported as e:
                note = str(e)
        elif note is None and d["type"] not in RULES and d["type"] not in NO_RULE and is_custom_function(fn):
            note = CUSTOM_FUNCTION
        dtype, cuda = lowest([d["dtype"], *in_dtypes]), (d["device"] or "").startswith("cuda")
        attrs = d["attrs"] if d["type"] not in _GEOMETRY else {**d["attrs"], "input_geometry": _geometry(nf[0][0])}
        if d["type"] in CPU_KERNEL:
            attrs = {**attrs, "device": d["device"]}
        ops[nid] = Op(nid, d["type"], d.get("name"), nexts, in_shapes, in_dtypes, list(d["outputs"]),
                       dtype, d["dtype"] or "float64", attrs, saved, note,
                       cuda and dtype == "float32" and d["type"] in tf32,
                       cuda and dtype in ("float16", "bfloat16") and d["type"].startswith(_ATOMIC))
    return ops


# Nodes whose rule needs the input's strides and storage offset (as_strided indexes the storage itself): known
# for a leaf (its tensor is on the graph), None otherwise.
_GEOMETRY = frozenset({"AsStridedBackward0", "AsStridedBackward0_copy", "AsStridedScatterBackward0"})


def _geometry(fn):
    """(strides, storage offset) of a leaf input; "fresh" for the output of an op that allocates its result (taken
    as contiguous at offset 0); None for a view (its geometry is not exposed to Python)."""
    name = type(fn).__name__
    while name.startswith(_RESHAPES):  # a reshaping view of a contiguous tensor is contiguous at the same offset
        fn = fn.next_functions[0][0]
        name = type(fn).__name__
        if name == "AccumulateGrad":
            v = fn.variable
            return "fresh" if v.is_contiguous() and v.storage_offset() == 0 else None
    if fn is None:
        return None
    if name == "AccumulateGrad":
        return tuple(fn.variable.stride()), fn.variable.storage_offset()
    return None if name.startswith(_VIEWS) else "fresh"  # CopySlices: a base tensor changed in place through a view


_RESHAPES = ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "UnsqueezeBackward0", "SqueezeBackward",
             "AliasBackward0")


_VIEWS = ("View", "Reshape", "Slice", "Select", "Transpose", "TBackward", "Permute", "Expand", "Squeeze", "Unsqueeze",
          "AsStrided", "Diagonal", "Alias", "Unfold", "Split", "Unbind", "Narrow", "Unsafe", "Real", "Imag", "ViewAs",
          "Chunk", "Indices", "Values", "Conj", "Neg")


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
    ``a`` (the sum of the magnitudes of the parts added into it; None: ``|g|``, computed only where gradients
    are summed) and ``u`` (unit roundoff of the sum)."""
    g: object
    e: np.ndarray
    a: np.ndarray | None
    u: float

    def __add__(self, o: Flow) -> Flow:  # the engine's sum and the mirror's each round once
        if _big_real(self.g, o.g):  # the same arithmetic in two passes over the arrays, not eight
            return Flow(np.add(self.g, o.g), _sum_bound(self, o), _Sum(self, o), max(self.u, o.u))
        a, g = self.parts() + o.parts(), self.g + o.g
        if not isinstance(g, (np.ndarray, np.generic)):  # two 0-d object arrays of Values add to a bare Value
            g = np.asarray(g, dtype=object)
        return Flow(g, self.e + o.e + (self.u + _U64) * a + _ETA[self.u], a, max(self.u, o.u))

    def parts(self) -> np.ndarray:
        a = self.a
        if isinstance(a, _Sum):  # made now: the sum is summed again
            return a.x.parts() + a.y.parts()
        return np.abs(floats(self.g)) if a is None else a


class _Sum(NamedTuple):
    """The magnitudes of the parts of a sum of two big Flows (Flow.a), made only if it is summed again."""
    x: Flow
    y: Flow


def _big_real(g, h) -> bool:
    return (isinstance(g, np.ndarray) and isinstance(h, np.ndarray) and g.dtype == h.dtype == np.float64
            and g.shape == h.shape and g.size > CHUNK)


def _sum_bound(x: Flow, y: Flow) -> np.ndarray:
    """Flow.__add__'s E, e_x + e_y + (u + u64) (|parts of x| + |parts of y|) + eta, chunk by chunk."""
    ax, ay = (None if isinstance(f.a, _Sum) else f.a for f in (x, y))
    px = x.parts() if isinstance(x.a, _Sum) else ax
    py = y.parts() if isinstance(y.a, _Sum) else ay
    c, eta = x.u + _U64, _ETA[x.u]
    it = chunks(x.e, y.e, x.g if px is None else px, y.g if py is None else py, out=True)
    with it:
        for ex, ey, qx, qy, ec in it:
            a = (np.abs(qx) if px is None else qx) + (np.abs(qy) if py is None else qy)
            a *= c
            e = np.add(ex, ey)
            e += a
            e += eta
            ec[...] = e
        return it.operands[-1]


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
    pos, indeg = consumer_counts(order, nexts)
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


def run_rule(op: Op, gs, saved: dict, ctx=Ctx, scalar=False) -> list:
    """The rule's gradients per slot, each summed to its input's shape (as the engine does), given the incoming
    gradients `gs` and the saved tensors as arrays (`saved`, see _Saved). Floating-point warnings are the
    caller's to silence (the mirror runs under ``np.errstate(all="ignore")``)."""
    if all(g is None for g in gs):
        return [None] * len(op.nexts)
    c = ctx(op.type, gs, saved, op.attrs, op.in_shapes, op.out_shapes, scalar, op.in_dtypes)
    out = RULES[op.type](c)
    if len(out) != len(op.nexts):
        raise Unsupported(f"rule for {op.type} returned {len(out)} gradients for {len(op.nexts)} inputs")
    return [None if o is None or s is None or op.nexts[i] is None else
            sum_to(_real_for(o if isinstance(o, Mag) else np.asarray(o), op.in_dtypes[i]), s)
            for i, (o, s) in enumerate(zip(out, op.in_shapes))]


def _real_for(o, dtype):
    """A complex gradient for a real input keeps its real part (PyTorch's handle_r_to_c)."""
    if (dtype or "").startswith("complex") or not (isinstance(o, Mag) or np.iscomplexobj(o)):
        return o
    return np.real(o)


class _Saved:
    """The nodes' saved tensors as the rules read them: numpy arrays (float64 for floating tensors, `array`),
    and their magnitudes for the run on magnitudes (`mags`). Each made when first needed,
    once however many nodes saved the same tensor, and dropped after its last node (`done`)."""

    def __init__(self, ops):
        self.left: dict = {}
        self.made: dict = {}
        for op in ops:
            for t in _tensors(op.saved):
                self.left[id(t)] = self.left.get(id(t), 0) + 1

    def _get(self, t, kind):
        rec = self.made.setdefault(id(t), {})
        v = rec.get(kind)
        if v is None:
            v = rec[kind] = (_as_array(t) if kind == "array" else _as_array32(t) if kind == "array32" else
                             _abs(self._get(t, "array32" if kind == "mags32" else "array")))
            if isinstance(v, np.ndarray):
                v.flags.writeable = False  # shared by the nodes that saved the tensor
        return v

    def view(self, saved: dict, kind: str = "array") -> dict:
        """The saved tensors as arrays (`kind` "array"), float32 arrays ("array32": float32, float16 and bfloat16
        tensors exactly, others rounded) or Mags ("mags"; "mags32": with float32 magnitudes, Mag.m32, where they
        are exact)."""
        def one(t):
            if t is None:
                return None
            if kind in ("array", "array32") or not t.is_floating_point():
                return self._get(t, kind if t.is_floating_point() else "array")
            if kind == "mags32" and t.dtype in _EXACT32:  # a fresh Mag: its rounding count is its own
                rec = self.made.get(id(t), {})
                return Mag(rec.get("mags"), self._get(t, "array"), 0, m32=self._get(t, "mags32"))
            return Mag(self._get(t, "mags"), self._get(t, "array"), 0)
        return {k: tuple(one(t) for t in v) if isinstance(v, tuple) else one(v) for k, v in saved.items()}

    def done(self, saved: dict):
        for t in _tensors(saved):
            k = id(t)
            n = self.left.get(k, 1) - 1
            self.left[k] = n
            if n <= 0:
                rec = self.made.pop(k, None)
                if rec:
                    conv.forget(rec.values())


def _tensors(saved: dict):
    for v in saved.values():
        for x in (v if isinstance(v, tuple) else (v,)):
            if x is not None:
                yield x


def _abs(x):
    if x.dtype in (np.float64, np.float32) and (not x.size or np.min(x) >= 0):
        return x  # (activations after a ReLU: the same array, read-only)
    return np.abs(x) if x.dtype in (np.float64, np.float32) else np.abs(x).astype(np.float64)


_EXACT32 = (torch.float32, torch.float16, torch.bfloat16)  # saved tensors whose numbers float32 holds exactly


def _as_array32(t: torch.Tensor) -> np.ndarray:
    """A floating saved tensor as a read-only float32 array: PyTorch's own memory for a float32 CPU tensor, else one
    conversion (exact for float16 and bfloat16; float64 rounds)."""
    d = t.resolve_neg()
    if d.dtype == torch.float32 and d.device.type == "cpu" and d.numel() > 16:
        a = d.detach().numpy(force=True)
    else:
        a = d.to("cpu", torch.float32, copy=True, memory_format=torch.contiguous_format).numpy(force=True)
    a.flags.writeable = False
    return a


class Step:
    """Runs each node for `replay` and judges it on the spot (NOTE [bound]): the local check (the rule on
    PyTorch's incoming gradients against PyTorch's outgoing ones) and the end-to-end check (the mirror's own
    incoming gradients against PyTorch's), kept in ``verdicts[id]``; the arrays themselves are not kept."""

    def __init__(self, seen_in, seen_out, scalar: bool, ops=()):
        from . import verdicts  # (verdicts reads this module's helpers)
        self.seen_in, self.seen_out, self.scalar = seen_in, seen_out, scalar
        # complex gradients only pass between nodes left unmirrored (complex tensors): kept as they are
        self.wrap = (lambda a: a if np.iscomplexobj(a) else as_values(a)) if scalar else (lambda a: a)
        self.compare, self.merge, self.largest = verdicts._compare, verdicts._merge, verdicts._largest
        self.judge = verdicts._Judge
        self.within: dict = {}
        self.verdicts: dict = {}  # id -> (local check, its largest bound, end-to-end check, its largest bound)
        self.notes: dict = {}
        self.saved = _Saved(list(ops.values()) if isinstance(ops, dict) else list(ops))

    def __call__(self, op: Op, flows: list):
        raw = self.seen_in.get(op.id)
        if raw is None:
            return None  # PyTorch did not run this node (no leaf needed it)
        # PyTorch's gradients as numpy arrays, made here and dropped after (capture(lazy=True) keeps its tensors)
        self.seen_in[op.id] = ()
        torch_in = [_read(t) for t in raw]
        if any(t is None and f is not None for t, f in zip(torch_in, flows)):  # PyTorch's undefined gradient: 0
            torch_in = [np.zeros(np.shape(f.e)) if t is None and f is not None else t for t, f in zip(torch_in, flows)]
        torch_out = [_read(t) for t in self.seen_out.get(op.id, ())]
        self.seen_out[op.id] = ()
        self.within = {}  # slot -> (within, equal) for _differences, where the e2e check found them
        e2e = None if op.note else self.merge([self._incoming(i, f, t, op.out_dtype)
                                               for i, (f, t) in enumerate(zip(flows, torch_in))
                                               if f is not None and t is not None])
        e2e_bound = self.largest([f.e for f in flows if f is not None])
        try:
            few = None if self.scalar else _few_rows(op, torch_out)
            if few is not None:
                return self._few(op, *few, flows, torch_in)
            return self._run(op, flows, torch_in, torch_out)
        finally:
            self.saved.done(op.saved)
            local, bound = self.verdicts.get(op.id, (None, None))
            self.verdicts[op.id] = (local, bound, e2e, e2e_bound)

    def _few(self, op, sub, rows, t, flows, torch_in):
        """An embedding run on the rows its indices name and one they do not (_few_rows), its results spread over the
        whole weight: every other row as that one. The same numbers as the run on the whole weight, row for row."""
        try:
            out = self._run(sub, flows, torch_in, [t])
        finally:
            self.saved.done(sub.saved)
        n = op.in_shapes[0][0]
        return [None if f is None else Flow(*(None if x is None else _spread(x, rows, n) for x in f[:3]), f.u)
                for f in out]

    def _incoming(self, slot, f, t, dtype):
        """The end-to-end check of one incoming gradient (verdicts._compare); for a big real one, in the same pass
        over the arrays, what _differences asks (is |g - t| within the incoming bound, are they equal)."""
        g = f.g
        if not (isinstance(g, np.ndarray) and g.dtype == np.float64 and t.dtype in (np.float32, np.float64)
                and t.size > CHUNK and np.shape(g) == t.shape):
            return self.compare(g, t, f.e, dtype)
        judge, within, equal = self.judge(dtype), True, True
        it = chunks(g, t, f.e)
        with it:
            for gc, tc, ec in it:
                if not judge.add(gc, tc, ec):  # an infinity or a NaN: _compare and _differences decide alone
                    return self.compare(g, t, f.e, dtype)
                if within:  # (_within_chunks' arithmetic)
                    ad = np.abs(_difference(gc, tc))
                    if ad.max() != 0:
                        equal = False
                        within = bool(np.all(ad <= ec))
        self.within[slot] = (within, equal and within)
        return judge.result()

    def _run(self, op, flows, torch_in, torch_out):
        local = mine = ds = None
        cplx = is_complex(op)
        read = torch_in  # (as compared: float32 arrays stay float32, for the run on magnitudes)
        if op.note is None and op.type in RULES and cplx and (self.scalar or op.type not in COMPLEX_RULES):
            self.notes[op.id] = ("complex tensors: scalar mode's Values are real numbers (mode='tensor' checks them)"
                                 if self.scalar else f"complex tensors: the rule for {op.type} is for real numbers")
        elif op.type in RULES and op.note is None:
            try:
                arrays = self.saved.view(op.saved)
                ds, same = self._differences(op, flows, torch_in)
                if op.type in MOVES_ONLY and not same and not self.scalar:
                    # the rule only moves elements: on PyTorch's gradient as it is (float32 too) it is exact, and
                    # where PyTorch's own backward is a view of its gradient, local is that very view (_check)
                    local = run_rule(op, torch_in, arrays)
                    mine = run_rule(op, [None if f is None else f.g for f in flows], arrays)
                else:
                    torch_in = [None if g is None else _float64(g) for g in torch_in]  # (converted once, here)
                    local = run_rule(op, [None if g is None else self.wrap(g) for g in torch_in], arrays,
                                     scalar=self.scalar)
                    # the same incoming gradients give the same outgoing ones (tensor mode: scalar mode builds
                    # Values)
                    mine = local if same and not self.scalar else \
                        None if cplx else self._mine32(op, flows, torch_in, ds, local)
                    if mine is None:
                        mine = run_rule(op, [None if f is None else f.g for f in flows], arrays, scalar=self.scalar)
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
                    Flow(self.wrap(_float64(t)), np.zeros(np.shape(t)), np.abs(t, dtype=np.float64), _u_of(op, i))
                    for i, (t, d) in enumerate(zip(torch_out, op.nexts))]
        bound = self._bound(op, read, local, torch_out, cplx)
        moves = op.type in MOVES_ONLY  # (only these hand PyTorch's own gradient memory back as local)
        carried = self._carried(op, ds, mine, local, arrays)
        fused = {}  # slot -> (check, largest B, E, mine): a big slot judged and carried in one pass (_out)
        if any(type(b) is BoundOf for b in bound) or any(type(m) is _Mine for m in mine) or (
                not cplx and any(np.size(m) > CHUNK for m in local if m is not None)):
            for i, (m, t) in enumerate(zip(local, torch_out)):
                if (op.nexts[i] is not None and mine[i] is not None and _big_pair(m, t) and not cplx
                        and (carried[i] is None or mine is local)):
                    got = self._out(m, t, bound[i], mine[i], op.in_dtypes[i] or op.dtype, op.in_dtypes[i])
                    if got is not None:
                        fused[i] = got
            bound = [_made(b) if i not in fused else np.array([fused[i][1]]) for i, b in enumerate(bound)]
            mine = [_made(m) if i not in fused else fused[i][3] for i, m in enumerate(mine)]
        checks = [fused[i][0] if i in fused else
                  ("mismatch", False, math.inf, math.inf) if m is None else  # PyTorch's undefined gradient is 0
                  _IDENTICAL if moves and _same_memory(m, t) else
                  self.compare(m, np.zeros(np.shape(m)) if t is None else t, bound[i], op.in_dtypes[i] or op.dtype)
                  for i, (m, t) in enumerate(zip(local, torch_out))
                  if op.nexts[i] is not None and not (t is None and m is None)]
        self.verdicts[op.id] = (self.merge(checks) or ("match", True, 0.0, 0.0), self.largest(bound))
        out = []
        for i, m in enumerate(mine):
            if m is None:
                out.append(None)
                continue
            if i in fused:
                out.append(Flow(m, fused[i][2], None, _u_of(op, i)))
                continue
            if carried[i] is None and np.size(m) > CHUNK:  # |mine - local| and E in one pass, chunk by chunk
                out.append(Flow(m, _bound_out(bound[i], floats(m), numbers(local[i]), op.in_dtypes[i]), None,
                                _u_of(op, i)))
                continue
            c = _magnitude(_difference(floats(m), floats(local[i]))) if carried[i] is None else carried[i]
            e = np.add(bound[i], c)
            r = rounding(local[i], op.in_dtypes[i])
            if np.ndim(r) and np.shape(e) == np.shape(r):
                r += e  # (in place)
                e = r
            else:
                e = e + r
            out.append(Flow(m, e if np.shape(e) == np.shape(m) else np.broadcast_to(e, np.shape(m)), None,
                            _u_of(op, i)))
        return out

    def _out(self, local, t, bound, mine, cmp_dtype, dtype):
        """One big outgoing slot in one pass over its arrays: B (made here from a BoundOf), the local check of local
        against PyTorch's t within B (verdicts._compare's arithmetic), the mirror's own gradient (made here from a
        _Mine), and E = (B + |mine - local|) + rounding(local) (_bound_out's). Returns (check, largest B, E, mine),
        or None where an infinity or a NaN makes the check step aside (the caller then takes the usual path)."""
        identical = _same_memory(local, t)
        lazy_b, lazy_m = isinstance(bound, BoundOf), isinstance(mine, _Mine)
        ops = [bound.m if lazy_b else bound, local, t]
        if lazy_m:
            ops.append(mine.r)
        elif mine is not local:
            ops.append(floats(mine))
        judge = None if identical else self.judge(cmp_dtype)
        u, eta = (unit_roundoff(dtype), UNDERFLOW[dtype]) if dtype in UNDERFLOW and dtype != "float64" else (None, 0.0)
        top, nan = 0.0, False
        it = chunks(*ops, out=1 + lazy_m)
        with it:
            for part in it:
                bc, lc, tc = part[:3]
                if lazy_b:
                    b = np.multiply(bc, bound.factor, dtype=np.float64)
                    b += bound.add
                    bc = b
                x = float(np.max(bc, initial=0.0))
                if x != x:
                    nan = True
                elif x > top:
                    top = x
                if judge is not None and not judge.add(lc, tc, bc):
                    return None
                ec = part[3 + (len(ops) > 3)]
                if mine is local:  # E = (B + 0) + rounding(local): B + 0 is B (B >= 0 or NaN)
                    e = bc
                else:
                    if lazy_m:
                        mc = np.multiply(part[3], mine.inv, out=part[-1])
                        mc += lc
                    else:
                        mc = part[3]
                    d = mc - lc  # (_bound_out's arithmetic)
                    # (a finite local, as the check found it, and a finite r: d is finite)
                    if not (lazy_m and judge is not None) and not np.isfinite(np.add.reduce(d, axis=None)):
                        d = np.where((mc == lc) | (np.isnan(mc) & np.isnan(lc)), 0.0, d)
                    e = np.abs(d, out=d)
                    e = np.add(bc, e, out=e)
                ec[...] = _plus_rounding(e, lc, u, eta)
            outs = it.operands[len(ops):]
        check = _IDENTICAL if identical else judge.result()
        return check, math.nan if nan else top, outs[0], outs[1] if lazy_m else mine

    def _differences(self, op, flows, torch_in):
        """Per incoming slot d = the mirror's gradient minus PyTorch's (NOTE [bound]), clipped to what the bound
        admits where it exceeds it (a real disagreement upstream: carried only in part, so it is not absorbed);
        None where only one side has a gradient. Also: are the two incoming gradients equal everywhere?"""
        ds, same = [], True
        for f, t in zip(flows, torch_in):
            if f is None or t is None:
                ds.append(None if f is None else np.zeros(np.shape(f.e)))
                same = same and f is None and t is None
                continue
            g = floats(f.g)
            if t.size <= _SMALL or t.size > CHUNK:
                pre = self.within.get(len(ds))
                within, equal = pre if pre is not None else \
                    (_within_small if t.size <= _SMALL else _within_chunks)(g, t, f.e)
                if within:  # nothing to clip: d itself is needed only if another slot is clipped
                    same = same and equal
                    ds.append((g, t))
                    continue
            d = _difference(g, t)
            ad = np.abs(d)
            top = np.max(ad, initial=0.0)
            if top != 0 and not np.all(ad <= f.e):  # cheap first: inside the incoming bound, nothing to clip
                allowed = f.e + unit_roundoff(op.out_dtype) * np.abs(g) + UNDERFLOW.get(op.out_dtype, 0.0)
                if np.any(ad > allowed):
                    d = np.clip(d, -allowed, allowed)
                    ds.append(("clipped", d))
                    same = False
                    continue
            same = same and top == 0
            ds.append(d)
        return ds, same

    def _mine32(self, op, flows, torch_in, ds, local):
        """The mirror's own gradients at a node of a float32 (or lower) graph by linearity, local + rule(d), rule(d)
        in float32 on the saved tensors as float32 numbers (NOTE [bound]: d = G_mirror - G_torch is a few roundings of
        the graph dtype, so float32 computes rule(d) to far below them; E carries |mine - local| as computed); d
        scaled by a power of two first (exact), so float32's range holds it. None where this does not apply (the
        caller runs the rule on G_mirror in float64): a float64, complex or small node, a clipped or non-finite d, a
        slot where only PyTorch has a gradient, a rule that rounds to a dtype (not linear), a result that
        overflows."""
        if self.scalar or op.dtype == "float64" or sum(0 if t is None else t.size for t in torch_in) < _MINE32_MIN \
                or any(isinstance(d, tuple) and isinstance(d[0], str) for d in ds) or any(
                f is None and t is not None for f, t in zip(flows, torch_in)):
            return None
        ds = [_difference(*d) if isinstance(d, tuple) else d for d in ds]
        top = max((float(np.max(np.abs(d))) for d in ds if d is not None and d.size), default=0.0)
        if not math.isfinite(top) or top == 0:
            return None
        scale = 2.0 ** (40 - math.frexp(top)[1])  # the largest |d| near 2^40: no underflow, no overflow
        d32 = [None if d is None else _flushed(np.multiply(d, scale, out=np.empty(d.shape, np.float32),
                                                           casting="same_kind")) for d in ds]
        try:
            r = run_rule(op, d32, self.saved.view(op.saved, "array32"), _LinearCtx)
        except _NotLinear:
            return None
        mine = []
        for x, loc in zip(r, local):
            if (x is None) != (loc is None):
                return None
            if x is None:
                mine.append(None)
                continue
            if x.dtype not in (np.float32, np.float64) or not math.isfinite(float(np.sum(x, dtype=np.float64))):
                return None  # (a rule may compute some coefficients in float64: rule(d) is as good)
            mine.append(_Mine(x, 1 / scale, loc) if x.size > CHUNK else _Mine(x, 1 / scale, loc).array())
        return mine

    def _carried(self, op, ds, mine, local, arrays) -> list:
        """|rule(d)| per slot: by linearity rule(G_mirror) - rule(G_torch), exactly known (None: |mine - local|,
        computed with E); with a clipped d, the rule run on d itself."""
        if mine is local:
            return [0.0] * len(mine)
        if not any(isinstance(d, tuple) and isinstance(d[0], str) for d in ds):
            return [None] * len(mine)
        try:  # (a few elements judged in Python floats come as (g, t): their d now)
            out = run_rule(op, [d if not isinstance(d, tuple) else d[1] if isinstance(d[0], str) else
                                _difference(*d) for d in ds], arrays)
        except Exception:  # noqa: BLE001 - the disagreement is reported upstream; keep the bound only
            return [0.0] * len(mine)
        return [0.0 if o is None else np.abs(floats(o)) for o in out]

    def _bound(self, op, torch_in, local, torch_out, cplx) -> list:
        """Per slot: the bound B on PyTorch's rounding at this node, from one run on magnitudes."""
        u = unit_roundoff(op.dtype)
        if op.type in MOVES_ONLY:  # no rounding: B = 0 (a view, not an array)
            return [None if m is None else np.broadcast_to(0.0, np.shape(m)) for m in local]
        try:
            f32 = op.type in _PRODUCTS  # matrix products in float32 (bounds.NOTE [float32 magnitudes])
            mags = run_rule(op, [None if g is None else Mag.grad(g if g.dtype == np.float32 else _float64(g), f32)
                                 for g in torch_in],
                            self.saved.view(op.saved, "mags32" if f32 else "mags"), MagCtx)
            # complex arithmetic: a product is within sqrt2 gamma_2, a quotient within sqrt2 gamma_7 (Higham §3.6)
            k = 10 if cplx else 1
            # (a big one is made chunk by chunk as it is read: Step._out)
            return [None if x is None else bound_of(x, op.dtype, op.tf32, op.atomic) if k == 1 and x.size > CHUNK
                    else k * local_bound(x, op.dtype, op.tf32, op.atomic) for x in mags]
        except Exception as e:  # noqa: BLE001 - relative fallback, noted on the row
            self.notes[op.id] = f"bound: relative fallback ({type(e).__name__}: {e})"
            return [None if m is None or t is None else
                    gamma(FALLBACK_UNITS, u) * np.maximum(np.abs(floats(m)), np.abs(t))
                    for m, t in zip(local, torch_out)]


def _few_rows(op: Op, torch_out):
    """For an embedding whose indices name few rows of a big weight (a language model's token table): (the op on
    those rows and one row they do not name, the rows, PyTorch's gradient on them). Elsewhere the rule's gradient, its
    magnitudes and the mirror's own are what they are on that one row, and PyTorch's is zero: counted here (one pass;
    a nonzero there takes the run on the whole weight, which reports it). None: the run on the whole weight."""
    if op.type != "EmbeddingBackward0" or op.note is not None or op.attrs.get("scale_grad_by_freq") or is_complex(op):
        return None
    shape, idx = op.in_shapes[0], op.saved.get("indices")
    t = torch_out[0] if torch_out else None
    if (shape is None or len(shape) != 2 or math.prod(shape) <= CHUNK or op.nexts[0] is None
            or not isinstance(t, np.ndarray) or t.shape != tuple(shape) or idx is None or idx.device.type != "cpu"):
        return None
    named, where = np.unique(idx.numpy(force=True).reshape(-1), return_inverse=True)
    if 2 * (named.size + 1) > shape[0] or (named.size and (named[0] < 0 or named[-1] >= shape[0])):
        return None
    gap = np.flatnonzero(named != np.arange(named.size))  # the first row not named
    rows = np.append(named, gap[0] if gap.size else named.size)
    pick = t[rows]
    if np.count_nonzero(pick) != np.count_nonzero(t):
        return None
    pad = op.attrs.get("padding_idx")
    if pad is not None and pad >= 0:
        hit = np.flatnonzero(rows == pad)
        pad = int(hit[0]) if hit.size else -1
    sub = op._replace(in_shapes=[(rows.size, shape[1])] + list(op.in_shapes[1:]),
                      attrs={**op.attrs, "weight_sym_argsize_0": rows.size, "padding_idx": pad},
                      saved={**op.saved, "indices": torch.from_numpy(where.reshape(tuple(idx.shape)))})
    return sub, rows, pick


def _spread(x, rows, n):
    """A (rows, d) array of Step._few over all n rows: row i of x at rows[i]; every row not named as the last one."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        return x
    rest = x[-1]
    if not np.any(rest) and not np.any(np.signbit(rest)):  # +0.0: pages the kernel maps as zeros
        out = np.zeros((n, x.shape[1]), x.dtype)
    else:
        out = np.empty((n, x.shape[1]), x.dtype)
        out[...] = rest
    out[rows[:-1]] = x[:-1]
    return out


_IDENTICAL = ("match", True, 0.0, 0.0)  # what verdicts._compare finds for two arrays with the same elements


def _big_pair(m, t) -> bool:
    """A big real slot whose local result and PyTorch's gradient are arrays of one shape (Step._out)."""
    return (isinstance(m, np.ndarray) and isinstance(t, np.ndarray) and m.shape == t.shape and m.size > CHUNK
            and m.dtype in (np.float32, np.float64) and t.dtype in (np.float32, np.float64))


def _same_memory(a, b) -> bool:
    """Are `a` and `b` the same elements of the same memory (then they are equal: no pass over them)?"""
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.size > _SMALL and a.dtype == b.dtype
            and a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _read(t):
    """One of PyTorch's gradients as the checks read it (capture.read_only; None stays None)."""
    return None if t is None else t if isinstance(t, np.ndarray) else read_only(t)


def _float64(a: np.ndarray) -> np.ndarray:
    """A gradient as the rules read it: a C-contiguous float64 array (PyTorch's own memory where it is one, else
    one copy; complex and others as they are, C-contiguous), as to_numpy makes it."""
    if a.dtype == np.float32 or not a.flags.c_contiguous:
        return np.array(a, dtype=np.float64 if a.dtype == np.float32 else a.dtype, order="C")
    return a


_FLUSH = np.float32(1.5 * 2.0**-20)


def _flushed(d32: np.ndarray) -> np.ndarray:
    """d32 (its largest element near 2^40) with the elements below 2^-44 set to 0 (adding and subtracting 1.5 2^-20
    rounds them away; the others move by at most one float32 ulp): float32 products slow down tenfold or more on
    subnormal numbers, and these are 2^-84 of the largest, far below what the mirror's own gradient needs."""
    d32 += _FLUSH
    d32 -= _FLUSH
    return d32


# Node types whose rule is a matrix product or convolution of the incoming gradient with saved tensors: their run on
# magnitudes takes float32 products (bounds.NOTE [float32 magnitudes]).
_PRODUCTS = frozenset({"ConvolutionBackward0", "MmBackward0", "AddmmBackward0", "BmmBackward0", "BaddbmmBackward0"})
_MINE32_MIN = 1 << 12  # elements of d below which float64 is as fast


class _Mine(NamedTuple):
    """The mirror's own gradient local + r / scale (Step._mine32), made by `array` or chunk by chunk (Step._out)."""
    r: np.ndarray
    inv: float
    local: np.ndarray

    def array(self) -> np.ndarray:
        m = np.multiply(self.r, self.inv, dtype=np.float64)
        return np.add(m, self.local, out=m)


def _made(m):
    """A _Mine or bounds.BoundOf made into its array (anything else as it is)."""
    return m.array() if isinstance(m, (_Mine, BoundOf)) else m


class _NotLinear(Exception):
    pass


class _LinearCtx(Ctx):
    """The rule context of Step._mine32: a rule that rounds to a dtype is not linear in G (rule(d) is not
    rule(G_mirror) - rule(G_torch)), so it makes _mine32 step aside."""

    __slots__ = ()

    def rounded(self, dtype, a):
        raise _NotLinear

_SMALL = 16  # gradients up to this size are judged element by element in Python floats (numpy's calls cost more)


def _within_small(g, t, e) -> tuple[bool, bool]:
    """For a few elements: is |g - t| (0 where equal or both NaN) within the incoming bound `e` everywhere, as
    _differences judges it with arrays (then nothing is clipped), and are g and t equal everywhere?"""
    gs = (g if g.shape == t.shape else np.broadcast_to(g, t.shape)).ravel().tolist()
    es = (e if np.shape(e) == t.shape else np.broadcast_to(e, t.shape)).ravel().tolist()
    equal = True
    for a, b, x in zip(gs, t.ravel().tolist(), es):
        if a == b or (a != a and b != b):
            continue
        equal = False
        if not abs(a - b) <= x:  # also NaN: the array path decides
            return False, False
    return True, equal


def _within_chunks(g, t, e) -> tuple[bool, bool]:
    """_within_small for big arrays, chunk by chunk with numpy (the same arithmetic as _differences)."""
    equal = True
    it = chunks(g, t, e)
    with it:
        for gc, tc, ec in it:
            ad = np.abs(_difference(gc, tc))
            top = ad.max()
            if top != 0:
                equal = False
                if not np.all(ad <= ec):
                    return False, False
    return True, equal


def _difference(m: np.ndarray, t: np.ndarray) -> np.ndarray:
    """m - t, with 0 where they are equal (equal infinities included) or both NaN."""
    d = np.subtract(m, t)
    if np.isfinite(np.add.reduce(d, axis=None)):  # one pass: every element finite, nothing to patch
        return d
    return np.where((m == t) | (np.isnan(m) & np.isnan(t)), 0.0, d)


def _bound_out(b, m, local, dtype) -> np.ndarray:
    """E = (B + |m - local|) + rounding(local, dtype) (Step._run's arithmetic), chunk by chunk."""
    it = chunks(b, m, local, out=True)
    u, eta = (unit_roundoff(dtype), UNDERFLOW[dtype]) if dtype in UNDERFLOW and dtype != "float64" else (None, 0.0)
    with it:
        for bc, mc, lc, ec in it:
            d = _difference(mc, lc)
            ad = np.abs(d) if np.iscomplexobj(d) else np.abs(d, out=d)
            ec[...] = _plus_rounding(np.add(bc, ad, out=ad), lc, u, eta)
        return it.operands[-1]


def _plus_rounding(e, lc, u, eta):
    """e + rounding(local): |local| u + eta added, for a graph dtype below float64 (u None: e itself)."""
    if u is None:
        return e
    r = np.abs(lc, dtype=np.float64)
    r *= u
    r += eta
    return np.add(r, e, out=r)


def _magnitude(d):
    in_place = isinstance(d, np.ndarray) and d.flags.writeable and d.base is None and not np.iscomplexobj(d)
    return np.abs(d, out=d) if in_place else np.abs(d)


def _u_of(op: Op, slot: int) -> float:
    d = op.in_dtypes[slot] or op.dtype
    u = _U_OF.get(d)
    if u is None:
        u = _U_OF[d] = unit_roundoff(lowest([d]))
    return u


_U_OF: dict = {}
