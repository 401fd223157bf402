"""The recorders a :class:`~autogradlens.watching.Watch` is made of, and the vocabulary they record in.

Each recorder owns its hooks: entering it installs them, :meth:`Recorder.undo` removes them (idempotent, also
after a half-done install). Every hook is local to the watched model, its parameters, its optimizer or the
watching thread; nothing of torch is patched:

- :class:`Forward`: the model's forward pre/post hooks. On detailed steps they push the watch's saved-tensor
  hooks for the model's forward (and pop them after, so they nest with the user's own saved_tensors_hooks and
  never meet a torch.func transform outside the model); each output gets a hook on its grad_fn, so every
  backward through the model runs at least one of the watch's hooks.
- :class:`SavedTensors`: pack / unpack, PyTorch's version check kept, attribution to node and slot.
- :class:`Gradients`: per parameter ``register_hook`` + ``register_post_accumulate_grad_hook``.
- :class:`Retain`: forward hooks that ``retain_grad()`` the outputs of named modules.
- :class:`Updates`: the optimizer's step pre/post hooks.

A backward pass is noticed by the first of these hooks that runs in it (its graph task, PyTorch's id for one
``backward()`` call, is new): the call's roots are read from the engine's Python frame and its end is a callback
queued on the task (``_torch.engine_call``, ``queue_callback``). All hooks return at once unless the watch is
active and the call comes from the watching thread (or an autograd thread serving it); they record numbers and
strings only, and ``torch.compile`` never traces them.

Numbers measured on a GPU stay there (:class:`Num`) until read, then all pending ones come back in one transfer:
a watch adds no host-device synchronisation to a training step.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
import weakref
from threading import get_ident

import torch

from ._torch import (
    current_node,
    dense,
    inplace_error,
    measurable,
    no_compile,
    pop_saved_hooks,
    push_saved_hooks,
    read_saved,
    remove_hook,
    saved_hooks_enabled,
    saved_names,
    sequence_nr,
    top_saved_hooks,
    unpack_hook,
    version,
)
from .tracing import assign_ids, short_name, walk

# ----------------------------------------------------------------------------- what a watch records

# The event kinds and their fields, declared once: the docs, save() and the readers (plots, report) use them.
# Fields in brackets appear only where they apply.
EVENTS = {
    "pack": ("a tensor saved for backward in the model's forward (detailed steps)",
             "node node_id slot shape dtype nbytes storage"),
    "unpack": ("a saved tensor read back by its node (backward pass)", "node node_id slot"),
    "backward": ("a backward() call of the user", "loss"),
    "accumulate": ("AccumulateGrad wrote a parameter's .grad", "param norm accumulated"),
    "retain": ("gradient landing on a module output kept by retain_grad()", "name retained norm [note]"),
    "update": ("one parameter's optimizer update",
               "param update_norm param_norm ratio lr effective_lr method "
               "[exp_avg_norm] [exp_avg_sq_norm] [adam_step] [momentum_norm]"),
    "warning": ("something that looks like a bug in the training loop (every step)", "message [param]"),
    "note": ("something watch did not measure, and why (every step)", "message"),
}
FIELDS = {
    "node": "type of the node (grad_fn) that saved the tensor / that reads it",
    "node_id": "that node's id in lens.trace of the same graph (join a timeline with a Trace)",
    "slot": "saved slot name (self, mat1, result, saved_tensors, ...)",
    "shape": "tensor shape", "dtype": "tensor dtype", "nbytes": "bytes of this tensor (not of its storage)",
    "storage": "key equal for saved tensors sharing memory within a step (s0, s1, ...)",
    "loss": "the loss value when backward() was called on a one-element tensor",
    "param": "parameter name (as in model.named_parameters())",
    "norm": "2-norm of the gradient after the step's backward passes",
    "accumulated": "True when added onto an existing .grad",
    "name": "module name (as in model.named_modules())", "retained": "False when the output had no grad",
    "note": "what retain_grad() does (stated on the first retain event)",
    "update_norm": "2-norm of the parameter's change", "param_norm": "2-norm of the parameter after the step",
    "ratio": "update_norm / param_norm", "lr": "the group's learning rate",
    "effective_lr": "SGD: lr; Adam: lr / (sqrt(v_hat) + eps) at the median of v",
    "method": "how update_norm was obtained: lr*|grad|, lr*|momentum_buffer| or measured (before - after)",
    "exp_avg_norm": "Adam: 2-norm of m", "exp_avg_sq_norm": "Adam: 2-norm of v", "adam_step": "Adam: step count",
    "momentum_norm": "SGD: 2-norm of the momentum buffer",
    "message": "the text",
}
# Watch.steps: one dict per step. Scalars: name -> (meaning, how stored: array code q int64 / d float64, taken on
# "step": every step / "detailed": detailed steps only, else None); dicts parameter name -> number (float32) hold
# only the parameters measured that step.
STEP_SCALARS = {
    "loss": ("the loss of the step's (last) backward() on a one-element tensor, else None", "d", "step"),
    "saved_tensors": ("tensors saved in the model's forward (detailed steps, else None)", "q", "detailed"),
    "saved_bytes": ("their bytes, each storage counted once (detailed steps, else None)", "q", "detailed"),
    "backward_passes": ("backward() calls that reached the model", "q", "step"),
}
STEP_PER_PARAM = {  # detailed steps only ({} on the others)
    "grad_norm": "2-norm of .grad after the step's backward passes",
    "update_norm": "2-norm of the update",
    "param_norm": "2-norm of the parameter after the step",
    "effective_lr": "SGD: lr; Adam: lr / (sqrt(v_hat) + eps) at the median of v",
}
STEP_DERIVED = {
    "step": "the step number, from 0",
    "saved_by_type": "saved bytes per node type that saved them (detailed steps, else {})",
    "update_ratio": "update_norm / param_norm (detailed steps)",
    "detailed": "True on the steps whose statistics and timeline were taken (see sample=)",
    "notes": "what was not measured on the step, and why",
}


class Pack:
    """One tensor saved for backward on a step; its ``pack`` event is built when read. `node`, `node_id`, `slot`
    are filled in by attribution at the start of backward; `producer` is the type of the saved tensor's own
    grad_fn (None for a leaf)."""
    __slots__ = ("node", "node_id", "slot", "step", "shape", "dtype", "storage", "producer")

    def __init__(self, step, shape, dtype, storage, producer):
        self.node = self.node_id = self.slot = None
        self.step, self.shape, self.dtype, self.storage, self.producer = step, shape, dtype, storage, producer

    def event(self) -> dict:
        shape = self.shape
        return {"kind": "pack", "step": self.step, "node": self.node, "node_id": self.node_id, "slot": self.slot,
                "shape": None if shape is None else tuple(shape), "dtype": short_name(self.dtype),
                "nbytes": None if shape is None else math.prod(shape) * self.dtype.itemsize, "storage": self.storage}


# ----------------------------------------------------------------------------- numbers

_SAMPLE = 1024     # Adam's effective step size: median over up to this many evenly spaced elements of v
_CACHE_SIZE = 16   # attribution answers remembered (one per distinct sequence of packs)
_SKIP_FRAMES = (os.path.dirname(torch.__file__), os.path.dirname(__file__))
_FULL = (torch.float32, torch.float64)
_STRIDED = torch.strided
DEFER_ON_CPU = False  # tests: treat CPU tensors like GPU ones (numbers read back in batches)


def warn(message: str) -> None:
    """warnings.warn pointing at the first frame outside torch and autogradlens: the user's line."""
    f, level = sys._getframe(0), 1
    while f is not None and f.f_code.co_filename.startswith(_SKIP_FRAMES):
        f, level = f.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


class Num:
    """A number still on its device: element `i` of a pending batch, times `scale`. ``float(n)`` reads every
    pending batch back in one transfer (one synchronisation), then answers from memory."""
    __slots__ = ("batch", "i", "scale")

    def __init__(self, batch, i, scale=1.0):
        self.batch, self.i, self.scale = batch, i, scale

    def __float__(self) -> float:
        b = self.batch
        if b.values is None:
            resolve()
        return b.values[self.i] * self.scale

    def __mul__(self, k):
        return Num(self.batch, self.i, self.scale * k)

    __rmul__ = __mul__


class _Batch:
    __slots__ = ("tensor", "values")

    def __init__(self, tensor):
        self.tensor, self.values = tensor, None


_PENDING: list = []  # _Batch objects whose values are still on their device
_RESOLVING = threading.RLock()  # two watching threads: neither reads a batch the other is still reading back


def resolve() -> None:
    """Read every pending batch back: one transfer per device."""
    with _RESOLVING:
        _resolve()


def _resolve() -> None:
    pending = []
    while _PENDING:  # (list.pop is atomic: a batch deferred meanwhile waits in _PENDING for the next resolve)
        pending.append(_PENDING.pop(0))
    by_device: dict = {}
    for b in pending:
        by_device.setdefault(b.tensor.device, []).append(b)
    for bs in by_device.values():
        flat = torch.cat([b.tensor.reshape(-1).to(torch.float64) for b in bs]).tolist()
        k = 0
        for b in bs:
            n = b.tensor.numel()
            b.values, b.tensor = flat[k:k + n], None
            k += n


def value(v):
    """A recorded number as a float (reading pending device numbers back), or None."""
    return v if v is None or type(v) is float else float(v)


def _deferred(ts: list) -> bool:
    return ts[0].device.type != "cpu" or DEFER_ON_CPU


def defer(t: torch.Tensor) -> list:
    """The elements of a 1-D tensor as numbers read back later (see Num)."""
    b = _Batch(t.detach())
    _PENDING.append(b)
    return [Num(b, i) for i in range(t.numel())]


def norms(ts: list) -> list:
    """2-norms of dense tensors in one fused call: floats on the CPU, pending Nums on a GPU (no sync)."""
    if not ts:
        return []
    try:
        if len(ts) <= 8 and ts[0].dtype in _FULL and not _deferred(ts):  # a few: one call each is faster on a CPU
            return [torch.linalg.vector_norm(x).item() for x in ts]
        ns = torch._foreach_norm(ts, 2, dtype=None if ts[0].dtype in _FULL else torch.float32)
        if _deferred(ts):
            return defer(torch.stack(ns))
        return torch.stack(ns).tolist()
    except (RuntimeError, TypeError):  # mixed devices or dtypes
        return [norm_of_one(t) for t in ts]


def norm_of_one(t: torch.Tensor):
    n = torch.linalg.vector_norm(t, dtype=torch.float64)
    return defer(n.reshape(1))[0] if _deferred([t]) else n.item()


def norm_of(t: torch.Tensor):
    """(norm or None, why not) for any gradient: sparse ones from their coalesced values."""
    why = measurable(t)
    if why is None:
        return norms([t])[0], None
    if t.layout == torch.sparse_coo and why.startswith("sparse"):
        return norm_of_one(t.coalesce().values()), None
    return None, why


# ----------------------------------------------------------------------------- hooks

def _no_compile(fn, traced: bool = False):
    """A hook torch.compile never traces. Backward hooks run as frames of their own (in compiled code's backward
    too): their code is marked, at no cost per call. Forward and optimizer hooks (`traced`) can be inlined
    while dynamo traces a compiled forward or step: they get ``torch.compiler.disable`` (about 1 us a call)."""
    return torch.compiler.disable(fn, recursive=True) if traced else no_compile(fn)


class _Handle:
    """A removable handle for an undo function (idempotent)."""

    def __init__(self, undo):
        self.undo = undo

    def remove(self):
        if self.undo is not None:
            self.undo()  # idempotent: if this is interrupted, remove() runs it again
            self.undo = None


class Recorder:
    """Installs hooks (:meth:`install`), keeps their handles, removes them all (:meth:`undo`)."""

    def __init__(self, w):
        self.w = w
        self.handles: list = []
        self.hooked: list = []  # (weakref to owner, kind, fn): what undo sweeps for, whatever became of the handle

    def install(self) -> None:
        """Add the hooks with :meth:`hook` (each recorder defines it)."""

    def hook(self, owner, kind: str, fn, **kw):
        """Register `fn` on `owner` (a module, tensor or optimizer; `kind` as in ``_torch.HOOK_DICTS``). It is
        noted before it is registered, so that undo finds it even if an interrupt lands before its handle is
        kept."""
        self.hooked.append((weakref.ref(owner), kind, fn))
        register = {"forward_pre": owner.register_forward_pre_hook if kind == "forward_pre" else None,
                    "forward": getattr(owner, "register_forward_hook", None),
                    "tensor": getattr(owner, "register_hook", None),
                    "post_accumulate": getattr(owner, "register_post_accumulate_grad_hook", None),
                    "step_pre": getattr(owner, "register_step_pre_hook", None),
                    "step_post": getattr(owner, "register_step_post_hook", None)}[kind]
        self.handles.append(register(fn, **kw))

    def undo(self) -> None:
        """Remove every hook, the last added first; safe to call again (after an interrupt, say)."""
        handles = self.handles
        while handles:
            handles[-1].remove()  # idempotent: if this is interrupted it simply runs again
            handles.pop()
        hooked = self.hooked
        while hooked:
            ref, kind, fn = hooked[-1]
            owner = ref()
            if owner is not None:
                remove_hook(owner, kind, fn)
            hooked.pop()

    def live(self) -> bool:
        """Should a hook firing now record? (Watch.observing)"""
        return self.w.observing()


# ----------------------------------------------------------------------------- forward, backward passes

class Forward(Recorder):
    """The model's forward hooks, armed only for the steps that need them (a module with forward hooks takes
    PyTorch's slower call path): detailed steps, where they push the saved-tensor hooks for the forward, and
    every step when no parameter hook would notice a backward (``grads=False``), where each output's grad_fn
    gets a hook so that the watch notices every backward through the model."""

    def __init__(self, w, saved, outputs: bool):
        super().__init__(w)
        self.saved = saved        # SavedTensors or None
        self.watch_outputs = outputs
        self.pushed = None        # the thread on whose stack our saved-tensor hooks are (pushed by the pre-hook)
        self.outputs: list = []   # handles of the hooks on the outputs' grad_fns (removed at exit)
        self.armed = False
        self.pre_fn, self.post_fn = _no_compile(self._pre, True), _no_compile(self._post, True)

    def install(self):
        self.handles.append(_Handle(self.pop))
        self.handles.append(_Handle(self._unhook_outputs))
        self.handles.append(_Handle(self.disarm))
        self.step(self.w._cur)

    def step(self, cur) -> None:
        """A step begins: arm the forward hooks if it needs them, else disarm them."""
        if cur.detailed and self.saved is not None or self.watch_outputs:
            if not self.armed:
                model = self.w._model()
                self.armed = True  # first: disarm() sweeps by identity, whether registered or not
                self.hook(model, "forward_pre", self.pre_fn)
                self.hook(model, "forward", self.post_fn, always_call=True)
        elif self.armed:
            self.disarm()

    def disarm(self) -> None:
        self.pop()  # left by a detailed forward an interrupt cut short
        if self.armed:
            model = self.w._model()
            if model is not None:
                remove_hook(model, "forward_pre", self.pre_fn)
                remove_hook(model, "forward", self.post_fn)
            self.handles[3:], self.hooked[:] = [], []
            self.armed = False

    def _pre(self, module, args):
        if not self.live():
            return
        self.pop()  # ours from a forward an interrupt cut short (a KeyboardInterrupt skips always_call hooks)
        _pop_stale()
        saved = self.saved
        if saved is not None and self.w._cur.detailed:
            if top_saved_hooks() is not None:  # the user's own (save_on_cpu, ...): ours on top would bypass them
                self.w._note("other saved_tensors_hooks (save_on_cpu, checkpoint or your own) were active for the "
                             "model's forward: the tensors it saved are not recorded")
            elif saved_hooks_enabled():
                self.pushed = get_ident()  # first: pop() checks that they are on top anyway
                push_saved_hooks(saved.pack, saved.unpack)
            else:  # inside a torch.func transform: it refuses saved-tensor hooks
                self.w._note("a torch.func transform ran the model (torch.func.grad, vjp, ...): the tensors it "
                             "saves are not recorded")

    def _post(self, module, args, out):
        self.pop()
        if not (self.watch_outputs and self.live()):
            return
        t = out if isinstance(out, torch.Tensor) else next(
            (o for o in (out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ())
             if isinstance(o, torch.Tensor) and o.grad_fn is not None), None)
        fn = getattr(t, "grad_fn", None)
        if fn is not None:
            outputs = self.outputs
            outputs.append(fn.register_prehook(self.w._passes_hook))
            if len(outputs) > 8:  # the graphs of earlier steps are gone, or will not be backwarded in the watch
                outputs.pop(0).remove()

    def pop(self):
        """Pop our saved-tensor hooks if this thread pushed them and they are on top of its stack (another thread's
        forward of the same model leaves them alone: the stacks are per thread)."""
        if self.pushed is not None and self.pushed == get_ident():
            saved = self.saved
            top = top_saved_hooks()
            if top is not None and top[0] is saved.pack and top[1] is saved.unpack:
                pop_saved_hooks()
            self.pushed = None

    def _unhook_outputs(self):  # (hooks on grad_fns: graphs that outlive the watch are rare and short-lived)
        outputs = self.outputs
        while outputs:
            outputs[-1].remove()
            outputs.pop()


def _pop_stale() -> None:
    """Pop saved-tensor hooks of a watch that is no longer active (left by an interrupt) from the top of this
    thread's stack."""
    while True:
        top = top_saved_hooks()
        owner = getattr(top[0], "__self__", None) if top is not None else None
        if not isinstance(owner, SavedTensors) or owner.w._active:
            return
        pop_saved_hooks()


# ----------------------------------------------------------------------------- saved tensors

def _unpack_event(step, node, r) -> dict:
    return {"kind": "unpack", "step": step, "node": node, "node_id": r.node_id, "slot": r.slot}


_FOREIGN = ("{} saved tensor(s) were packed by other saved_tensors_hooks (save_on_cpu, checkpoint or your own): "
            "not counted in saved_tensors / saved_bytes")


class SavedTensors(Recorder):
    """Every tensor saved for backward in the model's forward (pack) and read back (unpack). Saved-tensor hooks
    bypass PyTorch's version counter, so unpack checks it and raises PyTorch's own error. Which node and slot
    saved a tensor is learnt at the start of backward by walking the graph once and reading each slot (cached
    per sequence of packs)."""

    def __init__(self, w):
        super().__init__(w)
        self.attributing = None   # (node type, node id, slot) while the walk reads a slot
        self.cache: dict = {}     # pack signature -> ([(node, node_id, slot)], foreign slot count)
        self.names: dict = {}     # node type -> its saved slot names
        self.pack = _no_compile(self._pack)
        self.unpack = _no_compile(self._unpack)

    def _pack(self, t):  # runs for every saved tensor: records a few numbers, the event is built when read
        w = self.w
        cur = w._cur
        if not (w._active and cur.detailed):  # left on the stack by an interrupt
            return t
        d = t.detach()  # shares t's version counter
        fn = t.grad_fn
        producer = None if fn is None else type(fn)
        try:
            st = t.untyped_storage()
            ptr, snb = st.data_ptr(), st.nbytes()
            storages = cur.storages
            key = ptr if snb and ptr else -len(storages) - 1  # tensors sharing memory share a key
            hit = storages.get(key)
            if hit is None:
                hit = storages[key] = (f"s{len(storages)}", snb)
            r = Pack(cur.step, t.shape, t.dtype, hit[0], producer)
            ver = version(t)
        except (RuntimeError, NotImplementedError):
            r = Pack(cur.step, None, t.dtype, None, producer)
            w._note(f"a saved {measurable(t) or 'tensor without storage'}: its bytes are not counted")
            ver = None
        cur.saved_tensors += 1
        cur.packs.append(r)
        w._timeline.cur.append((Pack.event, r))
        # what unpack needs: the version to check, and for PyTorch's error text the producer's sequence number
        # (to recognise, during backward, the node that saved its own output), the output number, the tensor
        d._lens = (ver, None if fn is None else sequence_nr(fn), t.output_nr,
                   None if fn is None else weakref.ref(t), r)
        return d

    def _unpack(self, d):
        s = getattr(d, "_lens", None)
        if s is None:  # packed while the watch was not active
            return d
        r = s[4]
        if self.attributing is not None:
            if r.node is None:
                r.node, r.node_id, r.slot = self.attributing
            node = None
        else:
            node = current_node() if self.live() else None
            if node is not None:  # in backward (reads of _saved_* attributes by other code are not logged)
                self.w._sync()  # first: a new backward attributes this step's packs (named in the error below)
        if s[0] is not None and version(d) != s[0]:
            raise RuntimeError(self._stale_text(d, s))
        if node is not None:
            w = self.w
            w._timeline.cur.append((_unpack_event, w._cur.step, type(node).__name__, r))
        return d

    def _stale_text(self, d, s) -> str:
        ver, seq, output_nr, original, r = s
        node = current_node()
        is_output = node is not None and type(node) is r.producer and seq == sequence_nr(node)
        producer = None if r.producer is None else r.producer.__name__
        if not is_output and original is not None:
            t = original()
            if t is not None:
                producer = None if t.grad_fn is None else type(t.grad_fn).__name__
        where = f"{r.node_id} (slot {r.slot!r})" if r.node is not None else f"a node of step {r.step}"
        return (inplace_error(d, producer, output_nr, ver)
                + f" [autogradlens: this tensor was saved for backward by {where}]")

    def attribute(self, roots) -> None:
        """Name the node (type and trace id) and slot of this step's packs that have none yet."""
        cur = self.w._cur
        packs = cur.packs
        pending = [i for i, r in enumerate(packs) if r.node is None]
        if not pending:  # all named already; with no pack at all, only look for tensors saved by other hooks
            foreign = 0 if packs or not cur.detailed else self._walk(roots)
            if foreign:
                self.w._note(_FOREIGN.format(foreign))
            return
        sig = tuple((packs[i].shape, packs[i].dtype, packs[i].producer) for i in pending)
        hit = self.cache.pop(sig, None)
        if hit is None:
            foreign = self._walk(roots)
            found = [packs[i] for i in pending]
            if all(r.node is not None for r in found):
                hit = ([(r.node, r.node_id, r.slot) for r in found], foreign)
        else:
            for i, (node, nid, slot) in zip(pending, hit[0]):
                r = packs[i]
                r.node, r.node_id, r.slot = node, nid, slot
            foreign = hit[1]
        if hit is not None:
            self.cache[sig] = hit  # most recent last; the oldest answer goes first
            if len(self.cache) > _CACHE_SIZE:
                del self.cache[next(iter(self.cache))]
        if foreign:
            self.w._note(_FOREIGN.format(foreign))

    def _walk(self, roots) -> int:
        ts = list(roots) if isinstance(roots, (list, tuple)) else [roots]
        fns = []
        for t in ts:
            fn = getattr(t, "grad_fn", None)
            if fn is not None and fn not in fns:
                fns.append(fn)
        if not fns:
            return 0
        order, _ = walk(fns)
        ids = assign_ids(order, {})
        ours, foreign = self.unpack, 0
        for fn in order:
            ntype = type(fn).__name__
            if ntype == "AccumulateGrad":
                continue
            for slot in saved_names(fn, self.names)[0]:
                try:
                    hook = unpack_hook(fn, slot)
                except RuntimeError:
                    continue
                if hook is None:
                    continue
                if hook is not ours:  # someone else's hooks: reading would run them (checkpoint would recompute)
                    foreign += 1
                    continue
                self.attributing = (ntype, ids[fn], slot)
                try:
                    read_saved(fn, slot)
                except RuntimeError:
                    pass  # freed, or changed in place: backward itself will say so
                finally:
                    self.attributing = None
        return foreign


# ----------------------------------------------------------------------------- gradients

class Gradients(Recorder):
    """On detailed steps: every parameter's gradient norm after the step's backward passes (measured when the
    optimizer step begins, or when a backward ends without an optimizer; measuring inside the engine's end
    callback costs more), whether ``.grad`` was fresh or added onto (accumulate events) and a warning when it
    still held an earlier step's gradient (a forgotten ``zero_grad()``). On the other steps one parameter (the
    first; without an optimizer the last too) carries a hook: enough to notice each backward and its loss."""

    def __init__(self, w):
        super().__init__(w)
        self.params: list = []      # (name, weakref to the parameter) of parameters that require grad
        self.fns: dict = {}         # name -> (hook before accumulation, hook after)
        self.sentinels: set = set() # names whose first hook stays on every step
        self.armed = False          # the other hooks are on (detailed steps)
        self.before: dict = {}      # name -> (fresh, stale), from the hook that runs before AccumulateGrad
        self.last: dict = {}        # name -> (weakref to the .grad we left, its version, step)
        self.touched: dict = {}     # name -> accumulate record, this step
        self.seen: dict = {}        # name -> (weakref to .grad, version, norm) measured at the end of a backward
        self.pending = False        # a backward ended since the norms were last measured
        self.warned = False
        self.pending_warning = None

    def install(self):
        for name, p in self.w._named_params():
            self.add(name, p)
        if self.params:
            # the first parameter's gradient usually comes last in backward: its hook adds no pause between the
            # backward's kernels (with several threads, each pause lets the idle ones sleep, and waking them costs
            # more than the hook). Without an optimizer the step ends with the backward: the last one too.
            first, last = self.params[0][0], self.params[-1][0]
            self.sentinels = {first} if self.w._has_opt else {first, last}
            for name in self.sentinels:
                self._register(name, post=False)
        self.step(self.w._cur)

    def add(self, name, p):
        if p.requires_grad and p.is_leaf and name not in self.fns:
            ref = weakref.ref(p)
            self.fns[name] = (ref, _no_compile(self._pre(name, ref)), _no_compile(self._post(name)))
            self.params.append((name, ref))  # after: whatever is in params has its hooks in fns
            if self.armed:
                self._register(name)

    def _register(self, name, pre=True, post=True):
        ref, pre_fn, post_fn = self.fns[name]
        p = ref()
        if p is not None:
            if pre:
                p.register_hook(pre_fn)  # removed by identity (undo, disarm): no handle to lose
            if post:
                p.register_post_accumulate_grad_hook(post_fn)

    def step(self, cur) -> None:
        """A step begins: every parameter's hooks on detailed steps, the two sentinels' otherwise."""
        if cur.detailed and not self.armed:
            self.armed = True  # first: undo sweeps them by identity, registered or not
            for name, _ in self.params:
                self._register(name, pre=name not in self.sentinels)
        elif not cur.detailed and self.armed:
            self._sweep(keep_sentinels=True)
            self.armed = False

    def _sweep(self, keep_sentinels: bool) -> None:
        for name, ref in self.params:
            p = ref()
            if p is not None:
                _, pre_fn, post_fn = self.fns[name]
                if not (keep_sentinels and name in self.sentinels):
                    remove_hook(p, "tensor", pre_fn)
                remove_hook(p, "post_accumulate", post_fn)

    def undo(self) -> None:
        self._sweep(keep_sentinels=False)
        self.armed = False
        super().undo()

    def _pre(self, name, ref):
        def hook(grad):
            if not self.live():
                return
            w = self.w
            w._sync()
            if not w._cur.detailed:
                return
            p = ref()
            g = None if p is None else p.grad
            stale = False
            if g is not None:
                last = self.last.get(name)
                if last is not None and last[2] < w._cur.step:
                    # .grad holds an earlier step's gradient unless zero_grad() ran: set to None (fresh), or zeroed
                    # in place (a new version, all zeros). A new version that is not zero (clip_grad_norm_) is
                    # still stale. (Reading it back is a synchronisation on a GPU: only with a .grad kept.)
                    stale = (last[0]() is g and last[1] == version(g)) or not _is_zero(g)
            self.before[name] = (g is None, stale)
        return hook

    def _post(self, name):
        def hook(p):
            if not self.live():
                return
            w = self.w
            w._sync()
            cur = w._cur
            if not cur.detailed:
                return
            fresh, stale = self.before.pop(name, (True, False))
            prev = self.last.get(name)
            r = [cur.step, name, None, not fresh]  # the norm comes at the end of the backward
            w._timeline.cur.append((_accumulate_event, r))
            self.touched[name] = r
            g = p.grad
            self.last[name] = (weakref.ref(g), version(g), cur.step)
            if stale:
                msg = (f"gradients of {name} accumulated across steps: .grad still held step {prev[2]}'s "
                       f"gradient when step {cur.step}'s backward added to it; call optimizer.zero_grad() (or "
                       "model.zero_grad()) before each backward unless you accumulate on purpose")
                w._emit({"kind": "warning", "step": cur.step, "message": msg, "param": name})
                if not self.warned:
                    self.warned, self.pending_warning = True, msg
        return hook

    def finish(self) -> None:
        """After backward: the norms of the parameters' gradients (measured steps), then the deferred warning."""
        if self.pending:
            self.pending = False
            cur = self.w._cur
            if cur.detailed:
                self._measure(cur)
        if self.pending_warning is not None:
            msg, self.pending_warning = self.pending_warning, None
            warn(msg)

    def _measure(self, cur) -> None:
        named = [(n, g) for n, r in self.params if (p := r()) is not None and (g := p.grad) is not None]
        gs = [g for _, g in named]
        if all(g.layout is _STRIDED and not g.is_nested for g in gs):  # the usual case
            vals = norms(gs)
        else:
            vals = []
            for n, g in named:
                v, why = norm_of(g)
                if why is not None:
                    self.w._note(f"gradient of {n} is a {why}: its norm is not measured")
                vals.append(v)
        cur.grad_norm.update((n, v) for (n, _), v in zip(named, vals) if v is not None)
        # what the optimizer's update norm can reuse while .grad stays as it is (plain SGD: lr * this norm)
        self.seen = {n: (g, version(g), v) for (n, g), v in zip(named, vals) if v is not None}
        if self.touched:
            for n, r in self.touched.items():
                r[2] = cur.grad_norm.get(n)
            self.touched = {}

    def norm_now(self, name, g):
        """The norm of .grad `g` if measured since it last changed, else None."""
        hit = self.seen.get(name)
        if hit is not None and hit[0] is g and hit[1] == version(g):
            return hit[2]
        return None

    def forget(self) -> None:
        """The step is over: drop the references to its gradients."""
        self.seen = {}


def _accumulate_event(r) -> dict:
    return {"kind": "accumulate", "step": r[0], "param": r[1], "norm": value(r[2]), "accumulated": r[3]}


def _is_zero(g) -> bool:
    if g.layout != torch.strided:
        g = g.coalesce().values() if g.layout == torch.sparse_coo else g.values()
    return not bool(g.any())


# ----------------------------------------------------------------------------- retained gradients

class Retain(Recorder):
    """Modules named in ``retain``: their output gets ``retain_grad()`` at each forward and a tensor hook that
    logs the norm of the gradient landing there (on detailed steps)."""

    def __init__(self, w, names):
        super().__init__(w)
        self.names = names
        self.noted = False

    def install(self):
        modules = dict(self.w._model().named_modules())
        for name in self.names:
            self.hook(modules[name], "forward", _no_compile(self._forward(name), True))

    def _forward(self, name):
        grad_hook = _no_compile(self._grad(name))

        def hook(module, args, out):
            if not self.live():
                return
            w = self.w
            t = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(t, torch.Tensor) or not t.requires_grad:
                if w._cur.detailed:
                    w._emit({"kind": "retain", "step": w._cur.step, "name": name, "retained": False, "norm": None,
                             "note": "the output does not require grad (under no_grad, or nothing before it does)"})
                return
            t.retain_grad()
            t.register_hook(grad_hook)
        return hook

    def _grad(self, name):
        def hook(grad):
            if not self.live():
                return
            w = self.w
            w._sync()
            if not w._cur.detailed:
                return
            ev = {"kind": "retain", "step": w._cur.step, "name": name, "retained": True,
                  "norm": norm_of(grad)[0]}
            if not self.noted:  # stated once per watch
                self.noted, ev["note"] = True, RETAIN_NOTE
            w._timeline.cur.append((_retain_event, ev))
        return hook


def _retain_event(ev) -> dict:
    return {**ev, "norm": value(ev["norm"])}


RETAIN_NOTE = ("retain_grad() keeps .grad on this module's output; every other intermediate tensor has .grad None "
               "after backward (PyTorch frees non-leaf gradients to save memory)")


# ----------------------------------------------------------------------------- optimizer updates

class Updates(Recorder):
    """``optimizer.step()`` ends a step. Update norms are exact without touching the parameters twice where the
    optimizer's own numbers give them: plain SGD moves by lr·‖grad‖, SGD with momentum
    (not Nesterov) by lr·‖momentum buffer‖. Otherwise (Adam, Nesterov, weight decay without momentum, any
    other optimizer) the update is measured as before - after, in buffers that hold one copy of those
    parameters while the watch is active (``updates=False`` switches this off). Parameter norms, momentum
    buffers, Adam's moments and measured updates: all on detailed steps only (see ``sample=``)."""

    def __init__(self, w, opt):
        super().__init__(w)
        self.opt = weakref.ref(opt)
        self.plans: list = []
        self.buffers: dict = {}  # id(param) -> buffer for before - after
        self.medians: dict = {}  # id(param group) -> _Medians of Adam's v

    def install(self):
        opt = self.opt()
        self.pre_fn = _no_compile(self._pre, True)
        self.armed = False
        self.handles.append(_Handle(self.buffers.clear))
        self.handles.append(_Handle(self.medians.clear))
        self.handles.append(_Handle(self.disarm))
        self.hook(opt, "step_post", _no_compile(self._post, True))
        self.step(self.w._cur)

    def step(self, cur) -> None:
        """A step begins: the pre-step hook (which measures) only on detailed steps."""
        if cur.detailed and not self.armed:
            self.armed = True  # first: disarm() sweeps by identity, registered or not
            opt = self.opt()
            if opt is not None:
                opt.register_step_pre_hook(self.pre_fn)
        elif not cur.detailed and self.armed:
            self.disarm()

    def disarm(self) -> None:
        opt = self.opt()
        if opt is not None:
            remove_hook(opt, "step_pre", self.pre_fn)
        self.armed = False

    def _pre(self, opt, args, kwargs):
        if not self.live():
            return
        w = self.w
        w._step_begins()
        self.plans = []
        cur = w._cur
        if not (cur.detailed and w._updates):
            return
        for group in opt.param_groups:
            plan = _plan(opt, group)
            ps = [p for p in group["params"] if p.grad is not None and dense(p)]
            if not ps:
                continue
            extra = None
            if plan == "sgd":
                extra = w._grad_norms(ps)
            elif plan == "copy":
                bufs = []
                for p in ps:
                    b = self.buffers.get(id(p))
                    if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                        b = self.buffers[id(p)] = torch.empty_like(p, memory_format=torch.contiguous_format)
                    bufs.append(b)
                torch._foreach_copy_(bufs, [p.detach() for p in ps])
                extra = bufs
            self.plans.append((group, plan, ps, extra))

    def _post(self, opt, args, kwargs):
        if not self.live():
            return
        w = self.w
        w._top, w._tasks = None, set()  # the step's backward passes are over (no end callback with an optimizer)
        plans, self.plans = self.plans, []
        for group, plan, ps, extra in plans:
            self._measure(opt, group, plan, ps, extra)
        self.w._close_step()

    def _measure(self, opt, group, plan, ps, extra):
        """The step's numbers (tensors read detached: no grad-mode switch, which an interrupt could leave off)."""
        w, n, cur = self.w, len(ps), self.w._cur
        names = w._names_of(ps)
        lr = float(group["lr"])
        if plan == "sgd":  # the common case, kept short: p moved by lr * grad
            un = [None if g is None else lr * g for g in extra]
            cur.update_norm.update((nm, u) for nm, u in zip(names, un) if u is not None)
            cur.effective_lr.update(dict.fromkeys(names, lr))
            vals = norms([p.detach() for p in ps])
            step, add = cur.step, w._timeline.cur.append
            for name, u, pn in zip(names, un, vals):  # events built when read
                add((_update_event, step, name, u, pn, lr, lr, "lr*|grad|", (), ()))
            cur.param_norm.update(zip(names, vals))
            return
        states = [opt.state.get(p, _EMPTY) for p in ps]
        ps = [p.detach() for p in ps]
        adam = "betas" in group and all("exp_avg_sq" in s for s in states)
        bufs = None if adam else [s.get("momentum_buffer") for s in states]
        momentum = bufs is not None and None not in bufs
        tensors = list(ps)
        if plan == "copy":
            torch._foreach_sub_(extra, tensors)  # the buffers become before - after
            tensors += extra
        if adam:
            tensors += [s["exp_avg"] for s in states] + [s["exp_avg_sq"] for s in states]
        elif momentum:
            tensors += bufs
        vals = norms(tensors)
        k = 2 * n if plan == "copy" else n
        un = vals[n:k] if plan == "copy" else [lr * b for b in vals[n:2 * n]]
        if adam:
            med = self.medians.get(id(group))
            if med is None:
                med = self.medians[id(group)] = _Medians()
            eff = _adam_steps(states, group, med)
        method, step = _METHOD[plan], cur.step
        effs = [e[1] for e in eff] if adam else [lr] * n
        extra = ([(vals[k + i], vals[k + n + i], eff[i][0]) for i in range(n)] if adam
                 else [(vals[k + i],) for i in range(n)] if momentum else [()] * n)
        keys = _ADAM_KEYS if adam else _MOMENTUM_KEYS if momentum else ()
        add = w._timeline.cur.append
        for name, u, pn, e, x in zip(names, un, vals, effs, extra):  # events built when read
            add((_update_event, step, name, u, pn, lr, e, method, keys, x))
        cur.update_norm.update((nm, u) for nm, u in zip(names, un) if u is not None)
        cur.param_norm.update(zip(names, vals[:n]))
        cur.effective_lr.update(zip(names, effs))


def _update_event(step, name, u, pn, lr, eff, method, keys, extra) -> dict:
    u, pn = value(u), value(pn)
    ev = {"kind": "update", "step": step, "param": name, "update_norm": u, "param_norm": pn,
          "ratio": None if u is None or pn is None else (u / pn if pn else math.inf), "lr": lr,
          "effective_lr": value(eff), "method": method}
    ev.update(zip(keys, (value(x) if k != "adam_step" else x for k, x in zip(keys, extra))))
    return ev


_ADAM_KEYS = ("exp_avg_norm", "exp_avg_sq_norm", "adam_step")
_MOMENTUM_KEYS = ("momentum_norm",)
_EMPTY: dict = {}
_METHOD = {"sgd": "lr*|grad|", "momentum": "lr*|momentum_buffer|", "copy": "measured"}


def _plan(opt, group) -> str:
    """How to get the update norm exactly: from the gradient, from the momentum buffer, or measured."""
    if type(opt) is torch.optim.SGD and not group.get("nesterov") and not group.get("differentiable"):
        if group.get("momentum", 0) == 0 and group.get("weight_decay", 0) == 0:
            return "sgd"
        if group.get("momentum", 0) != 0:  # p -= lr * buf, whatever the dampening and weight decay
            return "momentum"
    return "copy"


class _Medians:
    """Medians of evenly spaced samples (at most _SAMPLE) of many tensors: the sample views and one NaN-padded
    matrix are built once per set of tensors (Adam's state is updated in place), then one copy and one median."""

    def __init__(self):
        self.key, self.refs, self.rows, self.dst, self.src = None, (), None, [], []

    def __call__(self, ts: list) -> list:
        key = tuple(id(t) for t in ts)
        if key != self.key or any(r() is not t for r, t in zip(self.refs, ts)):
            flat = [_flat_view(t) for t in ts]
            self.src = [(f if f is not None else t.detach().reshape(-1))[:: -(-t.numel() // _SAMPLE)]
                        for f, t in zip(flat, ts)]
            self.rows = torch.full((len(ts), max(v.numel() for v in self.src)), math.nan, dtype=torch.float32,
                                   device=ts[0].device)
            self.dst = [self.rows[i, : v.numel()] for i, v in enumerate(self.src)]
            # samples that are views follow Adam's in-place updates; a copy (a layout with gaps) is made again
            self.key = key if all(f is not None for f in flat) else None
            self.refs = [weakref.ref(t) for t in ts]
        torch._foreach_copy_(self.dst, self.src)
        meds = self.rows.nanmedian(dim=1).values
        return defer(meds) if _deferred(ts) else meds.tolist()


def _flat_view(t: torch.Tensor):
    """`t`'s elements as a 1-d view of its memory, in whatever dense layout (channels_last too), or None."""
    t = t.detach()
    if t.is_contiguous():
        return t.view(-1)
    v = t.permute(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    return v.view(-1) if v.is_contiguous() else None


class _AdamStep:
    """Adam's effective step size lr / (sqrt(v_hat) + eps) at the median of v, computed when read (the median
    may still be on the device)."""
    __slots__ = ("lr", "b1", "b2", "eps", "t", "median")

    def __init__(self, lr, b1, b2, eps, t, median):
        self.lr, self.b1, self.b2, self.eps, self.t, self.median = lr, b1, b2, eps, t, median

    def __float__(self) -> float:
        t, m = self.t, value(self.median)
        return (self.lr / (1 - self.b1**t)) / (math.sqrt(m) / math.sqrt(1 - self.b2**t) + self.eps)


def _adam_steps(states, group, medians) -> list:
    """(step count, effective step size) per parameter: lr / (sqrt(v_hat) + eps) at the median of v (the map is
    decreasing in v, so its median sits at v's median; the mean would be dominated by elements whose gradient
    stayed ~0, where Adam would take a huge step if a gradient came)."""
    meds = medians([s.get("max_exp_avg_sq", s["exp_avg_sq"]) for s in states])
    b1, b2 = group["betas"]
    lr, eps = float(group["lr"]), group["eps"]
    steps = [s["step"] for s in states]
    if all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in steps):
        steps = torch.stack(steps).tolist()  # Adam keeps its step counts on the CPU unless capturable/fused
    else:
        steps = [float(t) for t in steps]  # plain numbers (a capturable Adam's on the GPU: one read each)
    out = []
    for t, m in zip(steps, meds):
        t = float(t)
        out.append((int(t), _AdamStep(lr, b1, b2, eps, t, m) if isinstance(m, Num) else
                    (lr / (1 - b1**t)) / (math.sqrt(m) / math.sqrt(1 - b2**t) + eps)))
    return out
