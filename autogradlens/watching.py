"""`watch`: log what autograd and the optimizer do while a model trains, with PyTorch's own hooks.

Hooks used (all removed on exit, also when the body raises):
- ``saved_tensors_hooks``: every tensor saved for backward (``pack``) and read back (``unpack``);
  attribution to the node and slot that saved it: pack returns a numbered handle, and at the start of
  each backward the graph is walked once and every ``_saved_*`` attribute read, which unpacks the
  handle under the walk's eye;
- ``torch.autograd.backward`` is wrapped while the watch is active (that is what ``loss.backward()``
  calls): the loss value and the step boundary without an optimizer come from there;
- per parameter: ``register_hook`` (fresh or accumulated) and ``register_post_accumulate_grad_hook``;
- modules named in ``retain``: a forward hook calls ``retain_grad()`` on their output and a tensor
  hook reads the gradient that lands there;
- the optimizer's step pre/post hooks: update norms and the optimizer's state.

Python numbers that an op saves (the 2.5 of ``x / 2.5``) are stored without the saved-tensor hooks,
so watch does not see them (``trace`` does: 8 bytes each).

Events are :class:`Event` objects: dicts whose keys also read as attributes (``e["kind"]`` and
``e.kind`` are the same). Only numbers and strings are kept: a Watch keeps no tensor alive.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
import weakref
from pathlib import Path

import torch

from ._torch import current_node, saved_names
from .tracing import _dtype

__all__ = ["Event", "Watch", "watch"]

_ACTIVE: list = []


class Event(dict):
    """One timeline entry; ``e.kind`` and ``e["kind"]`` both work."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Packed:
    __slots__ = ("idx", "tensor")

    def __init__(self, idx, tensor):
        self.idx, self.tensor = idx, tensor


def _norm(t) -> float:
    return float(torch.linalg.vector_norm(t.detach()))


def _norms(ts) -> list[float]:
    """Norms of many tensors in one call and one sync."""
    if not ts:
        return []
    return torch.stack([n.double() for n in torch._foreach_norm([t.detach() for t in ts])]).tolist()


_SAMPLE = 1024  # Adam's effective step size: median over up to this many evenly spaced elements


RETAIN_NOTE = ("retain_grad() keeps .grad on this module's output; every other intermediate tensor has "
               ".grad None after backward (PyTorch frees non-leaf gradients to save memory)")


class Watch:
    """Records hooks while active; see :func:`watch`. ``events`` is the timeline, ``steps`` one dict per step."""

    def __init__(self, model, optimizer=None, retain=None, *, saved=True, grads=True, updates=True):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"watch() needs an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        modules = dict(model.named_modules())
        retain = [retain] if isinstance(retain, str) else list(retain or [])
        missing = [r for r in retain if r not in modules]
        if missing:
            raise ValueError(f"retain names modules that {type(model).__name__} does not have: {missing}; "
                             f"choose from {[n for n in modules if n]}")
        self._model = weakref.ref(model)
        self._opt = weakref.ref(optimizer) if optimizer is not None else None
        self._retain = retain
        self._flags = {"saved": saved, "grads": grads, "updates": updates}
        self._names = {id(p): n for n, p in model.named_parameters()}
        self.events: list[Event] = []
        self.steps: list[dict] = []
        self._state = "new"
        self._handles: list = []
        self._sth = None
        self._step = 0
        self._cur = self._new_step()
        self._packs: dict = {}       # handle idx -> its pack event (this step)
        self._sig: list = []         # (shape, dtype, producer type) per pack this step
        self._attr_cache: dict = {}  # pack signature -> [(node, slot)]
        self._attributing = None     # during the walk: the node and slot being read
        self._pack_count = 0
        self._last_acc_step: dict = {}
        self._fresh: dict = {}
        self._stale: dict = {}
        self._last_grad: dict = {}   # param -> (weakref to the .grad we saw, its version)
        self._before: dict = {}
        self._buffers: dict = {}     # copies of the parameters before a step (numbers only leave the Watch)
        self._warned = False

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Watch:
        if self._state != "new":
            raise RuntimeError("this Watch has already run: a Watch records one session; create a new "
                               "lens.watch(model, ...) to record again")
        if _ACTIVE:
            raise RuntimeError("lens.watch is already active: watches cannot be nested (the saved-tensor "
                               "hooks of the inner one would hide the outer one's); exit the first one first")
        _ACTIVE.append(self)
        self._state = "active"
        try:
            self._install()
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(self, *exc):
        self._uninstall()
        return False

    def _install(self):
        model = self._model()
        if self._flags["saved"]:
            self._sth = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._sth.__enter__()
        self._names_cache: dict = {}  # node type -> its saved slot names (dir() is slow)
        self._orig_backward = torch.autograd.backward
        torch.autograd.backward = self._backward
        if self._flags["grads"]:
            for name, p in model.named_parameters():
                if p.requires_grad:
                    self._handles.append(p.register_hook(self._pre_acc(name, p)))
                    self._handles.append(p.register_post_accumulate_grad_hook(self._post_acc(name)))
        modules = dict(model.named_modules())
        for name in self._retain:
            self._handles.append(modules[name].register_forward_hook(self._retainer(name)))
        opt = self._opt() if self._opt else None
        if opt is not None:
            self._handles.append(opt.register_step_pre_hook(self._opt_pre))
            self._handles.append(opt.register_step_post_hook(self._opt_post))

    def _uninstall(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self, "_orig_backward", None) is not None:
            torch.autograd.backward = self._orig_backward
            self._orig_backward = None
        if self._sth is not None:
            self._sth.__exit__(None, None, None)
            self._sth = None
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._state == "active":
            if self._cur["backward_passes"] or self._cur["saved_tensors"]:
                self._close_step()
            self._state = "done"
        self._before.clear()
        self._buffers.clear()
        self._packs.clear()

    # ------------------------------------------------------------------ events and steps
    def _new_step(self) -> dict:
        return {"step": self._step, "loss": None, "saved_tensors": 0, "saved_bytes": 0, "saved_by_type": {},
                "grad_norm": {}, "update_ratio": {}, "update_norm": {}, "effective_lr": {},
                "backward_passes": 0, "_storages": {}}

    def _emit(self, kind, **fields) -> Event:
        e = Event(kind=kind, step=self._step, **fields)
        self.events.append(e)
        return e

    def _close_step(self):
        cur = self._cur
        storages = cur.pop("_storages")
        cur.pop("_keys", None)
        owner: dict = {}
        for idx in sorted(self._packs):  # each storage counted once, under the first node (forward order) saving it
            e = self._packs[idx]
            owner.setdefault(e["storage"], e["node"])
        seen_types: dict = {}
        for key, nbytes in storages.items():
            ntype = owner.get(key) or "(never backwarded)"
            seen_types[ntype] = seen_types.get(ntype, 0) + nbytes
        cur["saved_bytes"] = sum(storages.values())
        cur["saved_by_type"] = dict(sorted(seen_types.items()))
        self.steps.append(cur)
        self._step += 1
        self._cur = self._new_step()
        self._packs = {}
        self._sig = []

    def record_loss(self, loss) -> None:
        """Tell the watch this step's loss (``loss.backward()`` inside the watch does it by itself)."""
        self._cur["loss"] = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

    # ------------------------------------------------------------------ saved tensors
    def _pack(self, t):
        idx = self._pack_count
        self._pack_count += 1
        st = t.untyped_storage()
        ptr, nbytes = st.data_ptr(), st.nbytes()
        storages = self._cur["_storages"]
        keys = self._cur.setdefault("_keys", {})
        key = keys.setdefault(ptr if nbytes else -idx - 1, f"s{len(keys)}")
        storages.setdefault(key, nbytes)
        self._cur["saved_tensors"] += 1
        fn = t.grad_fn
        self._sig.append((t.shape, t.dtype, None if fn is None else type(fn)))
        self._packs[idx] = self._emit("pack", node=None, slot=None, shape=tuple(t.shape),
                                      dtype=_dtype(t.dtype), nbytes=t.numel() * t.element_size(),
                                      storage=key)
        return _Packed(idx, t.detach())

    def _unpack(self, p):
        if self._attributing is not None:
            e = self._packs.get(p.idx)
            if e is not None and e["node"] is None:
                e["node"], e["slot"] = self._attributing
        else:
            node = current_node()
            if node is not None:  # during backward (reads of _saved_* attributes by other code are not logged)
                e = self._packs.get(p.idx)
                self._emit("unpack", node=type(node).__name__, slot=e["slot"] if e is not None else None)
        return p.tensor

    def _attribute(self, roots):
        from .tracing import _roots, _walk

        try:
            fns = _roots(roots)
        except (TypeError, ValueError):
            return
        order, _ = _walk(fns)
        cache = self._names_cache
        for fn in order:
            if type(fn).__name__ == "AccumulateGrad":
                continue
            slots, _ = saved_names(fn, cache)
            for a in slots:
                self._attributing = (type(fn).__name__, a)
                try:
                    if a == "saved_tensors":
                        fn.saved_tensors  # noqa: B018 - reading unpacks
                    else:
                        getattr(fn, "_saved_" + a)
                except RuntimeError:
                    pass  # freed or stale: not this step's
                finally:
                    self._attributing = None

    def _attribute_step(self, roots):
        """Attribute this step's packs; a training loop packs the same sequence every step, so the walk's
        answer is reused while the sequence of (shape, dtype, producer) is unchanged."""
        pending = [e for e in self._packs.values() if e["node"] is None]
        if not pending:
            return
        sig = tuple(self._sig[-len(pending):])
        cached = self._attr_cache.get(sig)
        if cached is not None:
            for e, (node, slot) in zip(pending, cached):
                e["node"], e["slot"] = node, slot
            return
        self._attribute(roots)
        if all(e["node"] is not None for e in pending):
            self._attr_cache[sig] = [(e["node"], e["slot"]) for e in pending]

    def _backward(self, tensors, *args, **kwargs):
        roots = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
        if self._flags["saved"]:
            self._attribute_step(roots)
        if len(roots) == 1 and isinstance(roots[0], torch.Tensor) and roots[0].numel() == 1:
            self._cur["loss"] = float(roots[0].detach())
        self._cur["backward_passes"] += 1
        self._emit("backward", loss=self._cur["loss"])
        try:
            return self._orig_backward(tensors, *args, **kwargs)
        finally:
            if self._opt is None:
                self._close_step()

    # ------------------------------------------------------------------ gradients
    def _pre_acc(self, name, p):
        ref = weakref.ref(p)

        def hook(grad):  # runs before AccumulateGrad: is there a .grad to add onto, and is it stale?
            q = ref()
            g = None if q is None else q.grad
            self._fresh[name] = g is None
            # stale: the very tensor (and version) our last accumulation left, untouched since; zero_grad()
            # sets it to None, or zeroes it in place (set_to_none=False), which bumps its version
            last = self._last_grad.get(name)
            self._stale[name] = g is not None and last is not None and last[0]() is g and last[1] == g._version
        return hook

    def _post_acc(self, name):
        def hook(p):
            accumulated = not self._fresh.pop(name, True)
            stale = self._stale.pop(name, False)
            n = _norm(p.grad)
            self._cur["grad_norm"][name] = n
            self._emit("accumulate", param=name, norm=n, accumulated=accumulated)
            self._last_grad[name] = (weakref.ref(p.grad), p.grad._version)
            last = self._last_acc_step.get(name)
            if stale and last is not None and last < self._step:
                msg = (f"gradients of {name} accumulated across steps: .grad still held step {last}'s gradient "
                       f"when step {self._step}'s backward added to it; call optimizer.zero_grad() (or "
                       "model.zero_grad()) before each backward unless you accumulate on purpose")
                self._emit("warning", message=msg, param=name)
                if not self._warned:
                    self._warned = True
                    warnings.warn(msg, UserWarning, stacklevel=2)
            self._last_acc_step[name] = self._step
        return hook

    def _retainer(self, name):
        def forward_hook(module, args, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(t, torch.Tensor) or not t.requires_grad:
                self._emit("retain", name=name, retained=False, norm=None,
                           note="the output does not require grad (no_grad or eval without grad?)")
                return
            t.retain_grad()
            t.register_hook(self._retain_grad_hook(name))
        return forward_hook

    def _retain_grad_hook(self, name):
        def hook(grad):
            self._emit("retain", name=name, retained=True, norm=_norm(grad), note=RETAIN_NOTE)
        return hook

    # ------------------------------------------------------------------ optimizer
    def _opt_pre(self, opt, args, kwargs):
        if self._flags["updates"]:
            for g in opt.param_groups:
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    buf = self._buffers.get(id(p))
                    if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
                        buf = self._buffers[id(p)] = torch.empty_like(p, memory_format=torch.contiguous_format)
                    self._before[id(p)] = buf.copy_(p.detach())

    def _opt_post(self, opt, args, kwargs):
        if self._flags["updates"]:
            for group in opt.param_groups:
                ps = [p for p in group["params"] if id(p) in self._before]
                if ps:
                    self._updates(opt, group, ps)
            self._before = {}
        self._close_step()

    def _updates(self, opt, group, ps):
        diffs = [self._before[id(p)] for p in ps]
        torch._foreach_sub_(diffs, [p.detach() for p in ps])  # the copies become before - after
        states = [opt.state.get(p, {}) for p in ps]
        adam = all("exp_avg" in st for st in states)
        moms = [st.get("momentum_buffer") for st in states]
        momentum = not adam and all(m is not None for m in moms)
        extra = [st[k] for k in ("exp_avg", "exp_avg_sq") for st in states] if adam else moms if momentum else []
        n = len(ps)
        norms = _norms(diffs + list(ps) + extra)  # one call, one sync
        for i, p in enumerate(ps):
            name = self._names.get(id(p), f"param{i}")
            u, pn = norms[i], norms[n + i]
            ratio = u / pn if pn else math.inf
            fields = {"param": name, "update_norm": u, "param_norm": pn, "ratio": ratio, "lr": group["lr"],
                      "effective_lr": group["lr"]}
            if adam:
                fields.update(_adam(states[i], group), exp_avg_norm=norms[2 * n + i], exp_avg_sq_norm=norms[3 * n + i])
            elif momentum:
                fields["momentum_norm"] = norms[2 * n + i]
            self._cur["update_norm"][name] = u
            self._cur["update_ratio"][name] = ratio
            self._cur["effective_lr"][name] = fields["effective_lr"]
            self._emit("update", **fields)

    # ------------------------------------------------------------------ output
    def to_records(self) -> list[dict]:
        """The events as flat dicts (tuples become lists), ready for JSON, CSV or pandas."""
        return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in e.items()} for e in self.events]

    def save(self, path) -> Path:
        """Write the events to `path`: JSON lines (.jsonl / .json) or CSV (.csv)."""
        path = Path(path)
        recs = self.to_records()
        if path.suffix in (".jsonl", ".json"):
            path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        elif path.suffix == ".csv":
            cols = sorted({k for r in recs for k in r}, key=lambda k: (k not in ("kind", "step"), k))
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(recs)
        else:
            raise ValueError(f"save() writes .jsonl or .csv, not {path.name!r}")
        return path

    def summary(self) -> dict:
        kinds: dict = {}
        for e in self.events:
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        return {"steps": len(self.steps), "events": len(self.events), "by_kind": kinds,
                "warnings": [e["message"] for e in self.events if e["kind"] == "warning"]}

    def __repr__(self) -> str:
        s = self.summary()
        return f"<Watch {self._state}: {s['steps']} steps, {s['events']} events {s['by_kind']}>"

    # plots live in plots.py
    def plot_grad_norms(self, ax=None):
        from .plots import grad_norms
        return grad_norms(self, ax=ax)

    def plot_update_ratios(self, ax=None):
        from .plots import update_ratios
        return update_ratios(self, ax=ax)

    def plot_saved_bytes(self, ax=None):
        from .plots import saved_bytes
        return saved_bytes(self, ax=ax)


def _adam(st, group) -> dict:
    """Adam's step count and effective step size lr / (sqrt(v_hat) + eps): the median over up to _SAMPLE
    evenly spaced elements (the mean is dominated by elements whose gradient stayed ~0, where Adam would
    take a huge step if a gradient came). The map is decreasing in v, so its median sits at v's median."""
    step = float(st["step"])
    b1, b2 = group["betas"]
    v = st["exp_avg_sq"].detach().reshape(-1)
    med = float(v[:: max(1, v.numel() // _SAMPLE)].median())
    eff = (group["lr"] / (1 - b1**step)) / (math.sqrt(med) / math.sqrt(1 - b2**step) + group["eps"])
    return {"adam_step": int(step), "effective_lr": eff}


def watch(model, *, optimizer=None, retain=None, saved: bool = True, grads: bool = True,
          updates: bool = True) -> Watch:
    """Log saved tensors, gradient accumulation, retained gradients and optimizer updates while training.

    Use as a context manager; a step ends at each ``optimizer.step()`` (or each backward when no
    optimizer is given). ``retain`` names modules (as in ``model.named_modules()``) whose outputs get
    ``retain_grad()``. ``saved`` / ``grads`` / ``updates`` switch hook groups off.

    Example:
        >>> import torch, torch.nn as nn, autogradlens as lens
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with lens.watch(model, optimizer=opt, retain=["1"]) as w:
        ...     for _ in range(2):
        ...         opt.zero_grad()
        ...         model(torch.randn(5, 3)).pow(2).mean().backward()
        ...         opt.step()
        >>> len(w.steps), sorted({e.kind for e in w.events})
        (2, ['accumulate', 'backward', 'pack', 'retain', 'unpack', 'update'])
    """
    return Watch(model, optimizer, retain, saved=saved, grads=grads, updates=updates)
