"""`watch`: log what autograd and the optimizer do while a model trains, with PyTorch's own hooks.

A Watch only observes: training under it is bit-identical to training without it; PyTorch's own errors (a
saved tensor changed in place) are raised as without it; other threads' work is not recorded; a layout it
cannot measure (sparse, nested, torch.func wrappers, tensors saved under other saved-tensor hooks) is skipped
with a ``note``, never a crash. It is made of small recorders (see ``recorders.py``), one per hook group.

Memory stays bounded: ``steps`` holds one compact summary per step (numbers in arrays, equal runs stored
once; about 30 bytes per step for a 2-parameter model), ``events`` the detailed timeline of at most ``keep``
steps (the first half and the most recent half). Statistics in ``steps`` are stored as float32; events hold
them in full. Python numbers an op saves (the 2.5 of ``x / 2.5``) bypass the saved-tensor hooks, so watch
does not see them (``trace`` does).
"""

from __future__ import annotations

import contextlib
import csv
import math
import threading
import weakref
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import torch

from . import recorders as rec
from ._files import csv_cell, dumps
from ._torch import mark_thread
from .errors import LensRuntimeError, LensTypeError, LensValueError

__all__ = ["EVENTS", "Event", "Watch", "watch"]

# The event kinds and their fields, declared once: the docs, save() and the readers (plots, report) use it.
# Fields in brackets appear only where they apply.
EVENTS = {
    "pack": ("a tensor saved for backward (forward pass)",
             "node node_id slot shape dtype nbytes storage"),
    "unpack": ("a saved tensor read back by its node (backward pass)", "node node_id slot"),
    "backward": ("a backward() call of the user", "loss"),
    "accumulate": ("AccumulateGrad wrote a parameter's .grad", "param norm accumulated"),
    "retain": ("gradient landing on a module output kept by retain_grad()", "name retained norm [note]"),
    "update": ("one parameter's optimizer update",
               "param update_norm param_norm ratio lr effective_lr method "
               "[exp_avg_norm] [exp_avg_sq_norm] [adam_step] [momentum_norm]"),
    "warning": ("something that looks like a bug in the training loop", "message [param]"),
    "note": ("something watch did not measure, and why", "message"),
}
FIELDS = {
    "node": "type of the node (grad_fn) that saved the tensor / that reads it",
    "node_id": "that node's id in lens.trace of the same graph (join a timeline with a Trace)",
    "slot": "saved slot name (self, mat1, result, saved_tensors, ...)",
    "shape": "tensor shape", "dtype": "tensor dtype", "nbytes": "bytes of this tensor (not of its storage)",
    "storage": "key equal for saved tensors sharing memory within a step (s0, s1, ...)",
    "loss": "the loss value when backward() was called on a one-element tensor",
    "param": "parameter name (as in model.named_parameters())",
    "norm": "2-norm of the gradient (None on steps not measured, see every=)",
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
_COLUMNS = ["kind", "step"] + list(dict.fromkeys(f.strip("[]") for _, fs in EVENTS.values() for f in fs.split()))
_PER_PARAM = ("grad_norm", "update_norm", "param_norm", "effective_lr")
_BATCH = 16  # closed steps folded into Watch.steps at a time
_SCALARS = (("loss", "d"), ("saved_tensors", "q"), ("saved_bytes", "q"), ("backward_passes", "q"),
            ("saved_by_type", "q"))

_ACTIVE: list = []  # at most one active Watch per process (the backward wrapper is process-wide)


def events_table() -> str:
    """The event kinds and fields as a text table (the docs print it)."""
    return "\n".join(f"{k:10s} {what}: {fields}" for k, (what, fields) in EVENTS.items())


class Event(dict):
    """One timeline entry; ``e.kind`` and ``e["kind"]`` both work."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# ----------------------------------------------------------------------------- storage

class _Step:
    """The step being recorded; closed into one compact row of `_Steps`."""

    def __init__(self, step: int, measured: bool):
        self.step, self.measured = step, measured
        self.loss = None
        self.saved_tensors = self.backward_passes = 0
        self.storages: dict = {}  # data pointer -> (key, nbytes)
        self.packs: list = []     # this step's pack records (forward order, see recorders._pack_event)
        self.grad_norm: dict = {}
        self.update_norm: dict = {}
        self.param_norm: dict = {}
        self.effective_lr: dict = {}
        self.notes: list = []

    def saved_by_type(self) -> dict:
        """Bytes per node type, each storage counted once under the first node (forward order) saving it."""
        if not self.storages:
            return {}
        owner: dict = {}
        for r in self.packs:
            owner.setdefault(r[6], r[0] or "(never backwarded)")
        out: dict = {}
        for key, nbytes in self.storages.values():
            t = owner.get(key, "(never backwarded)")
            out[t] = out.get(t, 0) + nbytes
        return dict(sorted(out.items()))


class _Column:
    """One number per step from step `start` on; a run of equal values is stored once until it changes.
    A missing value is stored as NaN (`nans` remembers the steps where NaN was the value itself)."""
    __slots__ = ("code", "start", "n", "first", "values", "nans")

    def __init__(self, code: str, start: int):
        self.code, self.start, self.n = code, start, 0
        self.first, self.values, self.nans = None, None, None

    def append(self, v) -> None:
        if v is None:
            v = math.nan
        elif v != v:
            self.nans = self.nans or set()
            self.nans.add(self.start + self.n)
        if self.values is None:
            if self.n == 0:
                self.first = v
            if v == self.first:
                self.n += 1
                return
            self.values = array(self.code, [self.first]) * self.n
        self.values.append(v)
        self.n += 1

    def get(self, step: int):
        i = step - self.start
        if not 0 <= i < self.n:
            return None
        v = self.first if self.values is None else self.values[i]
        return None if v != v and not (self.nans and step in self.nans) else v


class _Steps(Sequence):
    """``Watch.steps``: one dict per step, built on access from columns."""

    def __init__(self):
        self.n = 0
        self.cols: dict = {}       # name or (family, param) -> _Column
        self.kinds: list = []      # distinct saved_by_type dicts
        self.kind_ids: dict = {}
        self.notes: dict = {}      # step -> [note]
        self.pending: list = []    # closed steps not yet folded into the columns (done in batches, off the step)

    def add(self, s: _Step) -> None:
        self.pending.append(s)
        if len(self.pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for s in pending:
            self._add(s)

    def _col(self, key, code) -> _Column:
        c = self.cols.get(key)
        if c is None:
            c = self.cols[key] = _Column(code, self.n)
        return c

    def _add(self, s: _Step) -> None:
        sbt = s.saved_by_type()
        k = self.kind_ids.setdefault(tuple(sbt.items()), len(self.kinds))
        if k == len(self.kinds):
            self.kinds.append(sbt)
        c = self.cols
        if not c:
            for key, code in _SCALARS:
                self._col(key, code)
            self.scalars = [c[key].append for key, _ in _SCALARS]
            self.fams = [[] for _ in _PER_PARAM]  # per family: [(name, column.append)]
            self.famkeys = [set() for _ in _PER_PARAM]  # per family: the names in self.fams
        a = self.scalars
        a[0](s.loss)
        a[1](s.saved_tensors)
        a[2](sum(nb for _, nb in s.storages.values()))
        a[3](s.backward_passes)
        a[4](k)
        for fam, d, cols, keys in zip(_PER_PARAM, (s.grad_norm, s.update_norm, s.param_norm, s.effective_lr),
                                      self.fams, self.famkeys):
            if d.keys() == keys:  # the usual case: the same names as before
                for name, append in cols:
                    append(d[name])
                continue
            for name in d:
                if name not in keys:  # a name not seen in this family yet
                    keys.add(name)
                    cols.append((name, self._col((fam, name), "f").append))
            get = d.get
            for name, append in cols:
                append(get(name))
        if s.notes:
            self.notes[self.n] = list(dict.fromkeys(s.notes))
        self.n += 1

    def __len__(self) -> int:
        return self.n + len(self.pending)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self.pending:
            self.flush()
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"step {i} out of range: the watch recorded {self.n} steps")
        c = self.cols
        out = {"step": i, "loss": c["loss"].get(i), "saved_tensors": c["saved_tensors"].get(i),
               "saved_bytes": c["saved_bytes"].get(i), "saved_by_type": dict(self.kinds[c["saved_by_type"].get(i)]),
               "backward_passes": c["backward_passes"].get(i)}
        for fam in _PER_PARAM:
            out[fam] = {k[1]: v for k, col in c.items() if type(k) is tuple and k[0] == fam
                        and (v := col.get(i)) is not None}
        out["update_ratio"] = {n: (u / out["param_norm"][n] if out["param_norm"].get(n) else math.inf)
                               for n, u in out["update_norm"].items() if n in out["param_norm"]}
        out["notes"] = list(self.notes.get(i, ()))
        return out


class _Timeline:
    """The events of at most `keep` steps: the first keep // 2 and the most recent rest (keep=None: all)."""

    def __init__(self, keep):
        self.keep = keep
        self.head: list = []
        self.tail: deque = deque(maxlen=None if keep is None else keep - keep // 2)
        self.cur: list = []
        self.dropped = 0

    def close(self) -> None:
        if self.keep is None or len(self.head) < self.keep // 2:
            self.head.append(self.cur)
        elif self.tail.maxlen == 0:
            self.dropped += 1
        else:
            if len(self.tail) == self.tail.maxlen:
                self.dropped += 1
            self.tail.append(self.cur)
        self.cur = []

    def __iter__(self):  # an event stored as (builder, *args) is built here, when read
        tail, dropped = list(self.tail), self.dropped
        if self.cur:  # the step in progress counts against `keep` too
            if self.keep is None or len(self.head) < self.keep // 2:
                tail = [*tail, self.cur]  # it will join the head: nothing is dropped for it
            elif self.tail.maxlen == 0:
                dropped += 1
            else:
                tail.append(self.cur)
                if len(tail) > self.tail.maxlen:
                    tail.pop(0)
                    dropped += 1
        for evs in self.head:
            yield from (e if type(e) is dict else e[0](*e[1:]) for e in evs)
        if dropped:
            first = len(self.head)  # steps are numbered from 0: the head holds steps 0 .. first - 1
            yield {"kind": "note", "step": max(first - 1, 0) if self.head or not tail else first + dropped,
                   "message": f"the detailed events of {dropped} steps ({first} to {first + dropped - 1}) are not "
                              f"kept (keep={self.keep}); steps holds their summaries"}
        for evs in tail:
            yield from (e if type(e) is dict else e[0](*e[1:]) for e in evs)


# ----------------------------------------------------------------------------- the watch

class Watch:
    """Records training while active; see :func:`watch`. ``events`` is the timeline, ``steps`` one dict per step."""

    def __init__(self, model, optimizer=None, retain=None, *, every: int = 1, keep: int | None = 100,
                 saved: bool = True, grads: bool = True, updates: bool = True):
        if not isinstance(model, torch.nn.Module):
            raise LensTypeError(f"watch() needs the model as an nn.Module, got {type(model).__name__}; "
                                "pass the module you train: lens.watch(model, optimizer=opt)")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise LensTypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self._retain = _retain_names(model, retain)
        for name, v in (("every", every), ("keep", keep)):
            if not (v is None and name == "keep") and (type(v) is not int or v < (1 if name == "every" else 0)):
                raise LensValueError(f"{name} must be an int >= {1 if name == 'every' else 0}"
                                     f"{' or None' if name == 'keep' else ''}, got {v!r}")
        for name, v in (("saved", saved), ("grads", grads), ("updates", updates)):
            if not isinstance(v, bool):
                raise LensTypeError(f"{name} must be True or False, got {v!r}")
        self._model = weakref.ref(model)
        self._opt = optimizer
        self._every, self._keep = every, keep
        self._flags = (saved, grads, updates)
        self._updates = updates
        self._has_opt = optimizer is not None
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._active = False
        self._tid = None
        self._state = "new"
        self._stack = None
        self._steps = _Steps()
        self._timeline = _Timeline(keep)
        self._cur = _Step(0, True)
        self._saved = self._grads = None

    @property
    def events(self) -> list[Event]:
        """The timeline (at most `keep` steps' events, see :func:`watch`)."""
        return [Event(e) for e in self._timeline]

    @property
    def steps(self) -> _Steps:
        """One summary dict per step (a read-only sequence)."""
        return self._steps

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Watch:
        if self._state != "new":
            raise LensRuntimeError("this Watch has already run: a Watch records one session; create a new "
                                   "lens.watch(model, ...) to record again")
        if _ACTIVE:
            raise LensRuntimeError("lens.watch is already active: watches cannot be nested (the saved-tensor hooks "
                                   "of the inner one would hide the outer one's); exit the first one first")
        model = self._model()
        if model is None:
            raise LensValueError("the model given to lens.watch() no longer exists: nothing but the watch referred "
                                 "to it, so it was freed. Keep it in a variable: model = Net(); "
                                 "with lens.watch(model, optimizer=opt): ...")
        saved, grads, updates = self._flags
        opt, self._opt = self._opt, None
        stack = contextlib.ExitStack()
        try:
            stack.callback(self._finish)
            mark_thread(True)
            stack.callback(mark_thread, False)
            self._tid = threading.get_ident()
            _ACTIVE.append(self)
            stack.callback(_ACTIVE.remove, self)
            stack.enter_context(rec.Passes(self))
            if saved:
                self._saved = stack.enter_context(rec.SavedTensors(self))
            if grads:
                self._grads = stack.enter_context(rec.Gradients(self))
            if self._retain:
                stack.enter_context(rec.Retain(self, self._retain))
            if opt is not None:
                stack.enter_context(rec.Updates(self, opt))
        except BaseException:
            stack.close()
            raise
        self._stack, self._active, self._state = stack, True, "active"
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        return False

    def _finish(self):
        if self._active:
            self._grads_finish()
            if self._cur.backward_passes or self._cur.saved_tensors or self._timeline.cur:
                self._close_step()
        self._active, self._state = False, "done"
        self._saved = self._grads = None

    # ------------------------------------------------------------------ shared by the recorders
    def _named_params(self):
        return self._model().named_parameters()

    def _name(self, p) -> str:
        name = self._names.get(id(p))
        if name is None:  # added after the watch started: ask the model again, and hook it
            model = self._model()
            for n, q in (model.named_parameters() if model is not None else ()):
                if id(q) not in self._names:
                    self._names[id(q)] = n
                    if self._grads is not None:
                        self._grads.add(n, q)
            name = self._names.setdefault(id(p), f"param{len(self._names)}")
        return name

    def _grad_norm(self, name, p):
        n = self._grads.norm_now(name, p.grad) if self._grads is not None else None
        return rec.norms([p.grad.detach()])[0] if n is None and p.grad.layout == torch.strided else n

    def _emit(self, e: dict) -> dict:
        self._timeline.cur.append(e)
        return e

    def _note(self, message: str) -> None:
        if message not in self._cur.notes:
            self._cur.notes.append(message)
            self._emit({"kind": "note", "step": self._cur.step, "message": message})

    def _backward_begins(self, roots, top: bool):
        if self._saved is not None:
            self._saved.attribute(roots)
        if top:
            cur = self._cur
            root = roots[0] if isinstance(roots, (list, tuple)) and len(roots) == 1 else roots
            if isinstance(root, torch.Tensor) and root.numel() == 1 and root.layout == torch.strided:
                cur.loss = root.item()
            cur.backward_passes += 1
            self._emit({"kind": "backward", "step": cur.step, "loss": cur.loss})

    def _backward_ends(self):
        self._grads_finish()
        if not self._has_opt:
            self._close_step()

    def _grads_finish(self):
        if self._grads is not None:
            self._grads.finish()

    def _close_step(self):
        self._steps.add(self._cur)
        self._timeline.close()
        step = self._cur.step + 1
        self._cur = _Step(step, step % self._every == 0)

    def record_loss(self, loss) -> None:
        """Tell the watch this step's loss (``loss.backward()`` inside the watch does it by itself)."""
        self._cur.loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

    # ------------------------------------------------------------------ output
    def to_records(self) -> list[dict]:
        """The events as flat dicts (tuples become lists), ready for JSON, CSV or pandas."""
        return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in e.items()} for e in self._timeline]

    def save(self, path) -> Path:
        """Write the events to `path`: JSON lines (.jsonl / .json) or CSV (.csv).

        JSON is strict: non-finite numbers are written as the strings "inf", "-inf", "nan"
        (read them back with ``autogradlens._files.number``). CSV cells that a spreadsheet would run as a
        formula get a leading ``'``; numbers stay numbers. Columns follow ``EVENTS``.
        """
        path = Path(path)
        recs = self.to_records()
        if path.suffix in (".jsonl", ".json"):
            path.write_text("".join(dumps(r) + "\n" for r in recs))
        elif path.suffix == ".csv":
            present = {k for r in recs for k in r}
            cols = [c for c in _COLUMNS if c in present] + sorted(present - set(_COLUMNS))
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows({k: csv_cell(v) for k, v in r.items()} for r in recs)
        else:
            raise LensValueError(f"save() writes .jsonl or .csv, not {path.name!r}; pick one of those suffixes")
        return path

    def summary(self) -> dict:
        """Counts: steps, events (kept), by_kind, warnings."""
        kinds: dict = {}
        warns = []
        for e in self._timeline:
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
            if e["kind"] == "warning":
                warns.append(e["message"])
        return {"steps": len(self._steps), "events": sum(kinds.values()), "by_kind": kinds, "warnings": warns}

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


Watch.__doc__ += "\n\nEvent kinds (``EVENTS``; fields in brackets appear only where they apply):\n\n" + "\n".join(
    "    " + line for line in events_table().splitlines())


def _retain_names(model, retain) -> list[str]:
    if retain is None:
        return []
    if isinstance(retain, str):
        retain = [retain]
    elif not isinstance(retain, (list, tuple, set, frozenset)) or not all(isinstance(r, str) for r in retain):
        raise LensTypeError(f"retain must be a module name or a list of module names (as in "
                            f"model.named_modules()), got {retain!r:.80}; e.g. retain=['1'] or retain='layer1'")
    modules = dict(model.named_modules())
    missing = [r for r in retain if r not in modules]
    if missing:
        raise LensValueError(f"retain names modules that {type(model).__name__} does not have: {missing}; "
                             f"choose from {[n for n in modules if n]}")
    return list(retain)


def watch(model, *, optimizer=None, retain=None, every: int = 1, keep: int | None = 100, saved: bool = True,
          grads: bool = True, updates: bool = True) -> Watch:
    """Log saved tensors, gradient accumulation, retained gradients and optimizer updates while training.

    Use as a context manager; a step ends at each ``optimizer.step()`` (or each ``backward()`` when no
    optimizer is given). ``retain`` names modules (as in ``model.named_modules()``) whose outputs get
    ``retain_grad()``. ``every=N`` measures the norms (the costly statistics) every N-th step; ``keep`` bounds
    the detailed timeline to that many steps (None: all). ``saved`` / ``grads`` / ``updates`` switch hook
    groups off. Update norms of plain and momentum SGD come from lr·‖grad‖ / lr·‖buffer‖; for other
    optimizers the watch keeps one copy of the parameters to measure before − after (``updates=False`` avoids
    it). Event kinds are listed in ``autogradlens.watching.EVENTS``.

    Raises:
        LensTypeError: `model` is not an ``nn.Module``, `optimizer` not an optimizer, `retain` not names.
        LensValueError: `retain` names a module the model lacks; `every` < 1; `keep` < 0.

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
    return Watch(model, optimizer, retain, every=every, keep=keep, saved=saved, grads=grads, updates=updates)
