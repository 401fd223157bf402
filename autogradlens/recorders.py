"""The recorders a :class:`~autogradlens.watching.Watch` is made of. Each owns its hooks: entering it installs
them, leaving it removes them (also when installing fails half way), like ``torch.utils.hooks.RemovableHandle``.

- :class:`Passes`: the user's ``backward()`` calls (thread-filtered wrapper of ``torch.autograd.backward``);
- :class:`SavedTensors`: ``saved_tensors_hooks``: pack / unpack, PyTorch's version check kept, attribution;
- :class:`Gradients`: per parameter ``register_hook`` + ``register_post_accumulate_grad_hook``;
- :class:`Retain`: forward hooks that ``retain_grad()`` the outputs of named modules;
- :class:`Updates`: the optimizer's step pre/post hooks.

All hooks return at once unless the call comes from the watching thread (or an autograd thread serving it)
while the watch is active; they record numbers and strings only.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
import weakref
from threading import get_ident

import torch

from ._torch import (
    current_node,
    dense,
    in_marked_thread,
    inplace_error,
    measurable,
    pop_saved_hooks,
    push_saved_hooks,
    read_saved,
    saved_names,
    sequence_nr,
    top_saved_hooks,
    unpack_hook,
    version,
)
from .tracing import assign_ids, short_name, walk

_SAMPLE = 1024     # Adam's effective step size: median over up to this many evenly spaced elements of v
_CACHE_SIZE = 16   # attribution answers remembered (one per distinct sequence of packs)
_SKIP_FRAMES = (os.path.dirname(torch.__file__), os.path.dirname(__file__))


def warn(message: str) -> None:
    """warnings.warn pointing at the first frame outside torch and autogradlens: the user's line."""
    f, level = sys._getframe(0), 1
    while f is not None and f.f_code.co_filename.startswith(_SKIP_FRAMES):
        f, level = f.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


_FULL = (torch.float32, torch.float64)


def norms(ts: list) -> list:
    """2-norms of dense tensors in one fused call and one sync (float32 accumulation for half types)."""
    if not ts:
        return []
    try:
        ns = torch._foreach_norm(ts, 2, dtype=None if ts[0].dtype in _FULL else torch.float32)
        if len(ns) <= 8 and ts[0].device.type == "cpu":
            return [n.item() for n in ns]  # cheaper than a stack for a few
        return torch.stack(ns).tolist()  # one read back (one sync on a GPU)
    except (RuntimeError, TypeError):  # mixed devices or dtypes
        return [float(torch.linalg.vector_norm(t, dtype=torch.float64)) for t in ts]


def norm_of(t: torch.Tensor):
    """(norm or None, why not) for any gradient: sparse ones from their coalesced values."""
    why = measurable(t)
    if why is None:
        return norms([t])[0], None
    if t.layout == torch.sparse_coo and why.startswith("sparse"):
        return float(torch.linalg.vector_norm(t.coalesce().values(), dtype=torch.float64)), None
    return None, why


class _Handle:
    """A removable handle for an undo function (idempotent)."""

    def __init__(self, undo):
        self.undo = undo

    def remove(self):
        undo, self.undo = self.undo, None
        if undo is not None:
            undo()


class Recorder:
    """Installs hooks on enter, keeps their handles, removes them all on exit."""

    def __init__(self, w):
        self.w = w
        self.handles: list = []

    def install(self) -> None:
        """Add the hooks, appending their handles to ``self.handles`` (each recorder defines it)."""

    def __enter__(self):
        try:
            self.install()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        while self.handles:
            self.handles.pop().remove()
        return False

    def live(self) -> bool:
        """Should a hook firing now record? Only in an active watch, in the watching thread's work."""
        w = self.w
        return w._active and (get_ident() == w._tid or in_marked_thread())


# ----------------------------------------------------------------------------- backward passes

class Passes(Recorder):
    """``loss.backward()`` calls ``torch.autograd.backward``; while active the watch wraps it. Calls from other
    threads, and nested calls made inside a backward (reentrant checkpoint), pass straight through."""

    def install(self):
        orig = torch.autograd.backward

        def backward(tensors, *args, **kwargs):
            if not self.live():
                return orig(tensors, *args, **kwargs)
            top = current_node() is None
            self.w._backward_begins(tensors, top)
            try:
                return orig(tensors, *args, **kwargs)
            finally:
                if top:
                    self.w._backward_ends()

        torch.autograd.backward = backward
        self.handles.append(_Handle(lambda: setattr(torch.autograd, "backward", orig)))


# ----------------------------------------------------------------------------- saved tensors

def _pack_event(r) -> dict:
    """A pack record [node, node_id, slot, step, shape, dtype, storage key, producer type] as its event."""
    node, node_id, slot, step, shape, dtype, storage, _ = r
    return {"kind": "pack", "step": step, "node": node, "node_id": node_id, "slot": slot,
            "shape": None if shape is None else tuple(shape), "dtype": short_name(dtype),
            "nbytes": None if shape is None else math.prod(shape) * dtype.itemsize, "storage": storage}


def _unpack_event(step, node, r) -> dict:
    return {"kind": "unpack", "step": step, "node": node, "node_id": r[1], "slot": r[2]}


_FOREIGN = ("{} saved tensor(s) were packed by other saved_tensors_hooks (save_on_cpu, checkpoint or your own): "
            "not counted in saved_tensors / saved_bytes")


class SavedTensors(Recorder):
    """Every tensor saved for backward (pack) and read back (unpack). Saved-tensor hooks bypass PyTorch's version
    counter, so unpack checks it and raises PyTorch's own error. Which node and slot saved a tensor is learnt at
    the start of backward by walking the graph once and reading each slot (cached per sequence of packs)."""

    def __init__(self, w):
        super().__init__(w)
        self.attributing = None   # (node type, node id, slot) while the walk reads a slot
        self.cache: dict = {}     # pack signature -> ([(node, node_id, slot)], foreign slot count)
        self.names: dict = {}     # node type -> its saved slot names

    def install(self):
        ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        ctx.__enter__()
        self.handles.append(_Handle(lambda: ctx.__exit__(None, None, None)))
        # torch.func transforms refuse to run under saved-tensor hooks: step ours aside while they run
        graph = torch.autograd.graph
        orig = graph.disable_saved_tensors_hooks

        @contextlib.contextmanager
        def disable_saved_tensors_hooks(error_message):
            top = top_saved_hooks()
            ours = top is not None and top[0] == self.pack and top[1] == self.unpack
            if ours:
                pop_saved_hooks()
                if self.live():
                    self.w._note("a torch.func transform ran (torch.func.grad, vjp, ...): the tensors it saves are "
                                 "not recorded")
            try:
                with orig(error_message):
                    yield
            finally:
                if ours:
                    push_saved_hooks(self.pack, self.unpack)

        graph.disable_saved_tensors_hooks = disable_saved_tensors_hooks
        self.handles.append(_Handle(lambda: setattr(graph, "disable_saved_tensors_hooks", orig)))

    def pack(self, t):  # runs for every saved tensor: records a few numbers, the event is built when read
        cur = self.w._cur
        d = t.detach()  # shares t's version counter
        fn = t.grad_fn
        try:
            st = t.untyped_storage()
            ptr, snb = st.data_ptr(), st.nbytes()
            storages = cur.storages
            key = ptr if snb and ptr else -len(storages) - 1  # tensors sharing memory share a key
            hit = storages.get(key)
            if hit is None:
                hit = storages[key] = (f"s{len(storages)}", snb)
            r = [None, None, None, cur.step, t.shape, t.dtype, hit[0], None if fn is None else type(fn)]
            ver = version(t)
        except (RuntimeError, NotImplementedError):
            r = [None, None, None, cur.step, None, t.dtype, None, None if fn is None else type(fn)]
            self.w._note(f"a saved {measurable(t) or 'tensor without storage'}: its bytes are not counted")
            ver = None
        cur.saved_tensors += 1
        cur.packs.append(r)
        self.w._timeline.cur.append((_pack_event, r))
        # what unpack needs: the version to check, and for PyTorch's error text the producer's sequence number
        # (to recognise, during backward, the node that saved its own output), the output number, the tensor
        d._lens = (ver, None if fn is None else sequence_nr(fn), t.output_nr,
                   None if fn is None else weakref.ref(t), r)
        return d

    def unpack(self, d):
        s = d._lens
        r = s[4]
        if self.attributing is not None and r[0] is None:
            r[0], r[1], r[2] = self.attributing
        if s[0] is not None and version(d) != s[0]:
            raise RuntimeError(self._stale_text(d, s))
        if self.attributing is None and self.live():
            node = current_node()
            if node is not None:  # in backward (reads of _saved_* attributes by other code are not logged)
                self.w._timeline.cur.append((_unpack_event, self.w._cur.step, type(node).__name__, r))
        return d

    def _stale_text(self, d, s) -> str:
        ver, seq, output_nr, original, r = s
        node = current_node()
        is_output = node is not None and type(node) is r[7] and seq == sequence_nr(node)
        producer = None if r[7] is None else r[7].__name__
        if not is_output and original is not None:
            t = original()
            if t is not None:
                producer = None if t.grad_fn is None else type(t.grad_fn).__name__
        where = f"{r[1]} (slot {r[2]!r})" if r[0] is not None else f"a node of step {r[3]}"
        return (inplace_error(d, producer, output_nr, ver)
                + f" [autogradlens: this tensor was saved for backward by {where}]")

    def attribute(self, roots) -> None:
        """Name the node (type and trace id) and slot of this step's packs that have none yet."""
        cur = self.w._cur
        pending = [i for i, r in enumerate(cur.packs) if r[0] is None]
        if not pending:  # all named already; with no pack at all, only look for tensors saved by other hooks
            foreign = 0 if cur.packs else self._walk(roots)
            if foreign:
                self.w._note(_FOREIGN.format(foreign))
            return
        packs = cur.packs
        sig = tuple((packs[i][4], packs[i][5], packs[i][7]) for i in pending)
        hit = self.cache.pop(sig, None)
        if hit is None:
            foreign = self._walk(roots)
            found = [cur.packs[i] for i in pending]
            if all(r[0] is not None for r in found):
                hit = ([(r[0], r[1], r[2]) for r in found], foreign)
        else:
            for i, (node, nid, slot) in zip(pending, hit[0]):
                r = cur.packs[i]
                r[0], r[1], r[2] = node, nid, slot
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
                if hook != ours:  # someone else's hooks: reading would run them (checkpoint would recompute)
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
    """Per parameter: was ``.grad`` fresh or added onto, its norm (measured once per backward, in one fused
    call), and a warning when it still held an earlier step's gradient (a forgotten ``zero_grad()``)."""

    def __init__(self, w):
        super().__init__(w)
        self.before: dict = {}   # name -> (fresh, stale), from the hook that runs before AccumulateGrad
        self.last: dict = {}     # name -> (weakref to the .grad we left, its version, step)
        self.touched: list = []  # (name, param, event) accumulated in this backward
        self.seen: dict = {}     # name -> (weakref to .grad, version, norm) measured at the end of a backward
        self.warned = False
        self.pending_warning = None

    def install(self):
        for name, p in self.w._named_params():
            self.add(name, p)

    def add(self, name, p):
        if p.requires_grad and p.is_leaf:
            self.handles.append(p.register_hook(self._pre(name, weakref.ref(p))))
            self.handles.append(p.register_post_accumulate_grad_hook(self._post(name)))

    def _pre(self, name, ref):
        def hook(grad):
            if not self.live():
                return
            p = ref()
            g = None if p is None else p.grad
            stale = False
            last = self.last.get(name)
            if g is not None and last is not None and last[2] < self.w._cur.step:
                # .grad holds an earlier step's gradient unless zero_grad() ran: set to None (fresh), or zeroed in
                # place (a new version, all zeros). A new version that is not zero (clip_grad_norm_) is still stale.
                stale = (last[0]() is g and last[1] == version(g)) or not _is_zero(g)
            self.before[name] = (g is None, stale)
        return hook

    def _post(self, name):
        def hook(p):
            if not self.live():
                return
            w = self.w
            fresh, stale = self.before.pop(name, (True, False))
            prev = self.last.get(name)
            r = [w._cur.step, name, None, not fresh]  # the norm comes at the end of the backward
            w._timeline.cur.append((_accumulate_event, r))
            self.touched.append((name, p, r))
            g = p.grad
            self.last[name] = (weakref.ref(g), version(g), w._cur.step)
            if stale:
                msg = (f"gradients of {name} accumulated across steps: .grad still held step {prev[2]}'s "
                       f"gradient when step {w._cur.step}'s backward added to it; call optimizer.zero_grad() (or "
                       "model.zero_grad()) before each backward unless you accumulate on purpose")
                w._emit({"kind": "warning", "step": w._cur.step, "message": msg, "param": name})
                if not self.warned:
                    self.warned, self.pending_warning = True, msg
        return hook

    def finish(self) -> None:
        """End of a backward: the norms of the gradients it accumulated, then the deferred warning."""
        w, touched = self.w, self.touched
        self.touched = []
        if touched and w._cur.measured:
            grad_norm, seen = w._cur.grad_norm, self.seen
            gs = [p.grad for _, p, _ in touched]
            ok = [g for g in gs if dense(g)]
            if len(ok) == len(gs):  # the usual case: all dense, one fused call
                for (n, _, r), g, v in zip(touched, gs, norms(ok)):
                    r[2] = grad_norm[n] = v
                    seen[n] = (weakref.ref(g), version(g), v)
            else:
                for (n, _, r), g in zip(touched, gs):
                    v, why = norm_of(g)
                    if why is not None:
                        w._note(f"gradient of {n} is a {why}: its norm is not measured")
                    r[2] = v
                    if v is not None:
                        grad_norm[n] = v
                        if why is None and g.layout == torch.strided:
                            seen[n] = (weakref.ref(g), version(g), v)
        if self.pending_warning is not None:
            msg, self.pending_warning = self.pending_warning, None
            warn(msg)

    def norm_now(self, name, g):
        """The norm of .grad `g` if measured since it last changed, else None."""
        hit = self.seen.get(name)
        if hit is not None and hit[0]() is g and hit[1] == version(g):
            return hit[2]
        return None


def _accumulate_event(r) -> dict:
    return {"kind": "accumulate", "step": r[0], "param": r[1], "norm": r[2], "accumulated": r[3]}


def _is_zero(g) -> bool:
    if g.layout != torch.strided:
        g = g.coalesce().values() if g.layout == torch.sparse_coo else g.values()
    return not bool(g.any())


# ----------------------------------------------------------------------------- retained gradients

class Retain(Recorder):
    """Modules named in ``retain``: their output gets ``retain_grad()`` at each forward and a tensor hook that
    logs the norm of the gradient landing there."""

    def __init__(self, w, names):
        super().__init__(w)
        self.names = names
        self.noted = False

    def install(self):
        modules = dict(self.w._model().named_modules())
        for name in self.names:
            self.handles.append(modules[name].register_forward_hook(self._forward(name)))

    def _forward(self, name):
        def hook(module, args, out):
            if not self.live():
                return
            w = self.w
            t = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(t, torch.Tensor) or not t.requires_grad:
                w._emit({"kind": "retain", "step": w._cur.step, "name": name, "retained": False, "norm": None,
                         "note": "the output does not require grad (under no_grad, or nothing before it does)"})
                return
            t.retain_grad()
            t.register_hook(self._grad(name))
        return hook

    def _grad(self, name):
        def hook(grad):
            if not self.live():
                return
            w = self.w
            n = norm_of(grad)[0] if w._cur.measured else None
            ev = {"kind": "retain", "step": w._cur.step, "name": name, "retained": True, "norm": n}
            if not self.noted:  # stated once per watch
                self.noted, ev["note"] = True, RETAIN_NOTE
            w._emit(ev)
        return hook


RETAIN_NOTE = ("retain_grad() keeps .grad on this module's output; every other intermediate tensor has .grad None "
               "after backward (PyTorch frees non-leaf gradients to save memory)")


# ----------------------------------------------------------------------------- optimizer updates

class Updates(Recorder):
    """``optimizer.step()`` ends a step. Update norms are exact without touching the parameters twice where the
    optimizer's own numbers give them: plain SGD moves by lr·‖grad‖, SGD with momentum (not Nesterov) by
    lr·‖momentum buffer‖. Otherwise (Adam, Nesterov, weight decay without momentum, any other optimizer) the
    update is measured as before - after, in buffers that hold one copy of those parameters while the watch is
    active (``updates=False`` switches this off)."""

    def __init__(self, w, opt):
        super().__init__(w)
        self.opt = weakref.ref(opt)
        self.plans: list = []
        self.buffers: dict = {}  # id(param) -> buffer for before - after
        self.medians: dict = {}  # id(param group) -> _Medians of Adam's v

    def install(self):
        opt = self.opt()
        self.handles.append(opt.register_step_pre_hook(self._pre))
        self.handles.append(opt.register_step_post_hook(self._post))
        self.handles.append(_Handle(self.buffers.clear))
        self.handles.append(_Handle(self.medians.clear))

    def _pre(self, opt, args, kwargs):
        if not self.live():
            return
        w = self.w
        w._grads_finish()
        self.plans = []
        if not (w._cur.measured and w._updates):
            return
        for group in opt.param_groups:
            ps = [p for p in group["params"] if p.grad is not None and dense(p)]
            if not ps:
                continue
            plan = _plan(opt, group)
            extra = None
            if plan == "sgd":
                names = [w._name(p) for p in ps]
                extra = [w._grad_norm(n, p) for n, p in zip(names, ps)]
            elif plan == "copy":
                bufs = []
                for p in ps:
                    b = self.buffers.get(id(p))
                    if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                        b = self.buffers[id(p)] = torch.empty_like(p, memory_format=torch.contiguous_format)
                    bufs.append(b)
                with torch.no_grad():
                    torch._foreach_copy_(bufs, ps)
                extra = bufs
            self.plans.append((group, plan, ps, extra))

    def _post(self, opt, args, kwargs):
        if not self.live():
            return
        plans, self.plans = self.plans, []
        for group, plan, ps, extra in plans:
            self._measure(opt, group, plan, ps, extra)
        self.w._close_step()

    @torch.no_grad()
    def _measure(self, opt, group, plan, ps, extra):
        w, n, cur = self.w, len(ps), self.w._cur
        lr = float(group["lr"])
        if plan == "sgd":  # the common case, kept short: p moved by lr * grad
            names, vals = [w._name(p) for p in ps], norms(ps)
            step, add = cur.step, w._timeline.cur.append
            un = [None if g is None else lr * g for g in extra]
            for name, u, pn in zip(names, un, vals):  # events built when read
                add((_update_event, step, name, u, pn, lr, lr, "lr*|grad|", (), ()))
            cur.update_norm.update((nm, u) for nm, u in zip(names, un) if u is not None)
            cur.param_norm.update(zip(names, vals))
            cur.effective_lr.update(dict.fromkeys(names, lr))
            return
        states = [opt.state.get(p, _EMPTY) for p in ps]
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
        un = (vals[n:k] if plan == "copy" else [None if g is None else lr * g for g in extra] if plan == "sgd"
              else [lr * b for b in vals[n:2 * n]])
        if adam:
            med = self.medians.get(id(group))
            if med is None:
                med = self.medians[id(group)] = _Medians()
            eff = _adam_steps(states, group, med)
        method, step, names = _METHOD[plan], cur.step, [w._name(p) for p in ps]
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
    ev = {"kind": "update", "step": step, "param": name, "update_norm": u, "param_norm": pn,
          "ratio": None if u is None else (u / pn if pn else math.inf), "lr": lr, "effective_lr": eff,
          "method": method}
    ev.update(zip(keys, extra))
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
            self.src = [t.detach().reshape(-1)[:: -(-t.numel() // _SAMPLE)] for t in ts]
            self.rows = torch.full((len(ts), max(v.numel() for v in self.src)), math.nan, dtype=torch.float32,
                                   device=ts[0].device)
            self.dst = [self.rows[i, : v.numel()] for i, v in enumerate(self.src)]
            self.key, self.refs = key, [weakref.ref(t) for t in ts]
        torch._foreach_copy_(self.dst, self.src)
        return self.rows.nanmedian(dim=1).values.tolist()


def _adam_steps(states, group, medians) -> list:
    """(step count, effective step size) per parameter: lr / (sqrt(v_hat) + eps) at the median of v (the map is
    decreasing in v, so its median sits at v's median; the mean would be dominated by elements whose gradient
    stayed ~0, where Adam would take a huge step if a gradient came)."""
    meds = medians([s.get("max_exp_avg_sq", s["exp_avg_sq"]) for s in states])
    b1, b2 = group["betas"]
    lr, eps = float(group["lr"]), group["eps"]
    steps = [s["step"] for s in states]
    try:  # step counts are tensors: read them back in one call
        steps = torch.stack(steps).tolist()
    except (RuntimeError, TypeError):  # plain numbers, or on different devices
        steps = [float(t) for t in steps]
    out = []
    for t, m in zip(steps, meds):
        t = float(t)
        out.append((int(t), (lr / (1 - b1**t)) / (math.sqrt(m) / math.sqrt(1 - b2**t) + eps)))
    return out
