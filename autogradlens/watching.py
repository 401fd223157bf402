"""`watch`: log what autograd and the optimizer do while a model trains, with PyTorch's own hooks.

A Watch only observes: training under it is bit-identical to training without it; PyTorch's own errors (a
saved tensor changed in place) are raised as without it; other threads' work is not recorded; a layout it
cannot measure (sparse, nested, torch.func wrappers, tensors saved under other saved-tensor hooks) is skipped
with a ``note``, never a crash. It is made of small recorders (see ``recorders.py``), one per hook group, all
local to the model, its parameters, its optimizer and the watching thread: nothing of torch is patched, so a
watch cut short by Ctrl-C leaves nothing behind in the process (see :meth:`Watch._close`).

What it costs is kept low by sampling (``sample=``, default 20): every step records its loss, its backward
passes and where it ends; the *detailed* steps — the first ``sample`` steps, then every ``sample``-th — also
the statistics that read whole tensors (gradient norms, parameter norms and update/parameter ratios, momentum
buffers, Adam's moments and step sizes, the parameter copy that measures an update), the zero_grad() check and
the timeline (pack, unpack, backward, accumulate, retain, update events). ``steps[i]["detailed"]`` says which
steps those are; ``sample=1`` details every step; ``every=N`` keeps only the detailed steps that are multiples
of N. Reading a gradient costs as much memory traffic as the optimizer's own read of it: measured every step,
the statistics alone slow an SGD step of a 784-256-10 MLP by 11 % (see benchmarks/bench_watch.py).

Memory stays bounded: ``steps`` holds one compact summary per step (numbers in arrays, equal runs stored
once; about 9 bytes per step for a 2-parameter model at the defaults), ``events`` the detailed timeline of at
most ``keep`` steps (the first half and the most recent half). Statistics in ``steps`` are stored as float32;
events hold them in full. Numbers measured on a GPU stay there until read, then come back together: a watch
adds no host-device synchronisation to a step. Python numbers an op saves (the 2.5 of ``x / 2.5``) bypass the
saved-tensor hooks, so watch does not see them (``trace`` does). Saved tensors are recorded for the model's
forward: a loss computed outside the model saves its tensors unrecorded.
"""

from __future__ import annotations

import csv
import inspect
import math
import sys
import threading
import weakref
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import torch

from . import recorders as rec
from ._files import csv_cell, dumps
from ._torch import engine_call, graph_task_id, in_marked_thread, in_replay, mark_thread, queue_callback
from .errors import LensRuntimeError, LensTypeError, LensValueError
from .recorders import EVENTS, FIELDS, STEP_DERIVED, STEP_PER_PARAM, STEP_SCALARS, value

__all__ = ["EVENTS", "FIELDS", "STEP_DERIVED", "STEP_PER_PARAM", "STEP_SCALARS", "Event", "Watch", "watch"]

_COLUMNS = ["kind", "step"] + list(dict.fromkeys(f.strip("[]") for _, fs in EVENTS.values() for f in fs.split()))
_PER_PARAM = tuple(STEP_PER_PARAM)
_BATCH = 16  # closed steps folded into Watch.steps at a time (on a GPU: their numbers come back in one transfer)
_SCALARS = tuple((k, code) for k, (_, code, when) in STEP_SCALARS.items() if when == "step")
_DSCALARS = tuple((k, code) for k, (_, code, when) in STEP_SCALARS.items() if when == "detailed") + (
    ("saved_by_type", "q"),)  # an index into _Steps.kinds

_EMPTY = MappingProxyType({})
_ACTIVE: list = []  # active watches (a model or an optimizer is watched by one at a time)


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
    __slots__ = ("step", "measured", "detailed", "loss", "saved_tensors", "backward_passes", "storages", "packs",
                 "grad_norm", "update_norm", "param_norm", "effective_lr", "notes")

    def __init__(self, step: int, measured: bool, detailed: bool):
        self.step, self.measured, self.detailed = step, measured, detailed
        self.loss = None  # a float, a CPU tensor read when the step is folded, or a rec.Num
        self.saved_tensors = self.backward_passes = 0
        self.notes: list = []
        if detailed:  # what only detailed steps fill (the others share read-only empties)
            self.storages: dict = {}  # data pointer -> (key, nbytes)
            self.packs: list = []     # this step's rec.Pack records (forward order)
            self.grad_norm, self.update_norm, self.param_norm, self.effective_lr = {}, {}, {}, {}
        else:
            self.storages = self.grad_norm = self.update_norm = self.param_norm = self.effective_lr = _EMPTY
            self.packs = ()

    def saved_by_type(self) -> dict:
        """Bytes per node type, each storage counted once under the first node (forward order) saving it."""
        if not self.storages:
            return {}
        owner: dict = {}
        for r in self.packs:
            owner.setdefault(r.storage, r.node or "(never backwarded)")
        out: dict = {}
        for key, nbytes in self.storages.values():
            t = owner.get(key, "(never backwarded)")
            out[t] = out.get(t, 0) + nbytes
        return dict(sorted(out.items()))


class _Column:
    """One number per step from step `start` on; a run of equal values is stored once until it changes.
    A missing value is stored as NaN (integers: -1; `nans` remembers the steps where NaN was the value itself)."""
    __slots__ = ("code", "start", "n", "first", "values", "nans")

    def __init__(self, code: str, start: int):
        self.code, self.start, self.n = code, start, 0
        self.first, self.values, self.nans = None, None, None

    def append(self, v) -> None:
        if v is None:
            v = -1 if self.code == "q" else math.nan
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
        if self.code == "q":
            return None if v == -1 else v
        return None if v != v and not (self.nans and step in self.nans) else v


class _Steps(Sequence):
    """``Watch.steps``: one dict per step, built on access from columns (fields: ``STEP_SCALARS``,
    ``STEP_PER_PARAM``, ``STEP_DERIVED``). What only detailed steps have (saved tensors, parameter norms) is
    stored once per detailed step; which steps are detailed follows from `every` and `sample`."""

    def __init__(self, every: int = 1, sample: int = 1):
        self.every, self.sample = every, sample
        self.lcm = every * sample // math.gcd(every, sample)
        self.n = self.nd = 0       # steps, detailed steps
        self.cols: dict = {}       # name or (family, param) -> _Column, one value per step
        self.dcols: dict = {}      # the same, one value per detailed step
        self.kinds: list = []      # distinct saved_by_type dicts
        self.kind_ids: dict = {}
        self.notes: dict = {}      # step -> [note]
        self.pending: list = []    # closed steps not yet folded into the columns (done in batches, off the step)

    def detailed(self, step: int) -> bool:
        return step % self.every == 0 and (step < self.sample or step % self.sample == 0)

    def dindex(self, step: int) -> int:
        """How many detailed steps come before `step`."""
        e, m, lcm = self.every, self.sample, self.lcm
        head = (min(step, m) + e - 1) // e
        return head + (max(0, (step + lcm - 1) // lcm - (m + lcm - 1) // lcm) if step > m else 0)

    def add(self, s: _Step) -> None:
        self.pending.append(s)
        if len(self.pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for s in pending:
            self._add(s)

    def _col(self, cols, key, code, start) -> _Column:
        c = cols.get(key)
        if c is None:
            c = cols[key] = _Column(code, start)
        return c

    def _add(self, s: _Step) -> None:
        c = self.cols
        if not c:
            self.scalars = [self._col(c, key, code, 0).append for key, code in _SCALARS]
            self.dscalars = [self._col(self.dcols, key, code, 0).append for key, code in _DSCALARS]
            self.fams = [[] for _ in _PER_PARAM]  # per family: [(name, column.append)]
            self.famkeys = [set() for _ in _PER_PARAM]  # per family: the names in self.fams
        loss = s.loss
        if type(loss) is torch.Tensor:  # the root of the step's last backward, detached
            loss = loss.item() if loss.numel() == 1 and loss.layout == torch.strided else None
        for append, v in zip(self.scalars, (value(loss), s.backward_passes)):  # _SCALARS' order
            append(v)
        detailed = s.detailed
        if detailed:
            sbt = s.saved_by_type()
            k = self.kind_ids.setdefault(tuple(sbt.items()), len(self.kinds))
            if k == len(self.kinds):
                self.kinds.append(sbt)
            for append, v in zip(self.dscalars, (s.saved_tensors, sum(nb for _, nb in s.storages.values()), k)):
                append(v)
        for fam, dct, cols, keys in zip(_PER_PARAM, (s.grad_norm, s.update_norm, s.param_norm, s.effective_lr),
                                        self.fams, self.famkeys) if detailed else ():  # measured on detailed steps
            if dct.keys() == keys:  # the usual case: the same names as before
                for name, append in cols:
                    append(value(dct[name]))
                continue
            for name in dct:
                if name not in keys:  # a name not seen in this family yet
                    keys.add(name)
                    cols.append((name, self._col(self.dcols, (fam, name), "f", self.nd).append))
            get = dct.get
            for name, append in cols:
                append(value(get(name)))
        if s.notes:
            self.notes[self.n] = list(dict.fromkeys(s.notes))
        self.n += 1
        self.nd += detailed

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
        c, dc = self.cols, self.dcols
        detailed = self.detailed(i)
        j = self.dindex(i) if detailed else -1
        out = {"step": i}
        for k, (_, _, when) in STEP_SCALARS.items():
            out[k] = c[k].get(i) if when == "step" else dc[k].get(j) if detailed else None
        out["saved_by_type"] = dict(self.kinds[dc["saved_by_type"].get(j)]) if detailed else {}
        out["detailed"] = detailed
        for fam in _PER_PARAM:
            out[fam] = {k[1]: v for k, col in dc.items() if type(k) is tuple and k[0] == fam
                        and (v := col.get(j)) is not None} if detailed else {}
        out["update_ratio"] = {n: (u / out["param_norm"][n] if out["param_norm"].get(n) else math.inf)
                               for n, u in out["update_norm"].items() if n in out["param_norm"]}
        out["notes"] = list(self.notes.get(i, ()))
        return out


class _Timeline:
    """The events of at most `keep` steps: the first keep // 2 steps that have events and the most recent rest
    (keep=None: all). The step in progress counts too."""

    def __init__(self, keep):
        self.keep = keep
        self.head: list = []  # (step, events)
        self.tail: deque = deque(maxlen=None if keep is None else keep - keep // 2)
        self.cur: list = []
        self.dropped = 0      # steps whose events are not kept, from step dropped_from to dropped_to
        self.dropped_from = self.dropped_to = None

    def _drop(self, step: int) -> None:
        self.dropped += 1
        self.dropped_from = step if self.dropped_from is None else min(self.dropped_from, step)
        self.dropped_to = step if self.dropped_to is None else max(self.dropped_to, step)

    def close(self, step: int) -> None:
        cur, self.cur = self.cur, []
        if not cur:  # a step without detail (see sample=) takes no place
            return
        if self.keep is None or len(self.head) < self.keep // 2:
            self.head.append((step, cur))
        elif self.tail.maxlen == 0:
            self._drop(step)
        else:
            if len(self.tail) == self.tail.maxlen:
                self._drop(self.tail[0][0])
            self.tail.append((step, cur))

    def iter(self, step: int):
        """The events, the step in progress (number `step`) last; an event stored as (builder, *args) is built
        here, when read."""
        tail, dropped = list(self.tail), (self.dropped, self.dropped_from, self.dropped_to)
        if self.cur:  # the step in progress counts against `keep` too
            if self.keep is None or len(self.head) < self.keep // 2:
                tail.append((step, self.cur))  # it will join the head: nothing is dropped for it
            elif self.tail.maxlen == 0:
                dropped = (dropped[0] + 1, step if dropped[1] is None else min(dropped[1], step), step)
            else:
                tail.append((step, self.cur))
                if len(tail) > self.tail.maxlen:
                    gone = tail.pop(0)[0]
                    dropped = (dropped[0] + 1, gone if dropped[1] is None else min(dropped[1], gone),
                               gone if dropped[2] is None else max(dropped[2], gone))
        for _, evs in self.head:
            yield from (e if type(e) is dict else e[0](*e[1:]) for e in evs)
        n, first, last = dropped
        if n:  # on a kept step (the last of the head, else the first of the tail): it takes no place of its own
            at = self.head[-1][0] if self.head else tail[0][0] if tail else first
            yield {"kind": "note", "step": at, "message": f"the detailed events of {n} steps ({first} to {last}) "
                   f"are not kept (keep={self.keep}); steps holds their summaries"}
        for _, evs in tail:
            yield from (e if type(e) is dict else e[0](*e[1:]) for e in evs)


# ----------------------------------------------------------------------------- the watch

class _Exit:
    """What a ``with`` statement calls at the end of its block: ``Watch.__exit__`` gives one per lookup, and the
    one the ``with`` statement took before ``__enter__`` ran is armed with a :class:`_Guard`. An interrupt can
    land before any line of ``__exit__`` runs (Python checks for signals as a function starts), skipping it; the
    ``with`` statement then drops this object, and the guard undoes the watch instead."""
    __slots__ = ("w", "called", "guard", "__weakref__")

    def __init__(self, w):
        self.w, self.called, self.guard = w, False, None

    def __call__(self, *exc):
        self.called = True
        self.w._close()
        return False


class _Guard:
    """Undoes its watch when dropped while armed. Disarmed (its class switched to :class:`_Disarmed`, which has
    no ``__del__``) once the watch is closed, so that the usual exit runs no ``__del__``: an interrupt landing in
    one would be printed and lost."""
    __slots__ = ("w",)

    def __del__(self):
        w = getattr(self, "w", None)  # made with __new__, then given its watch: an interrupt can fall between
        if w is not None and w._state in ("entering", "active", "closing"):
            try:
                w._close()
            except KeyboardInterrupt:  # __del__ cannot raise: deliver it again
                import _thread

                _thread.interrupt_main()


class _Disarmed:
    __slots__ = ("w",)


class _ExitSlot:
    """``Watch.__exit__``: on an instance a fresh :class:`_Exit`; on the class (``type(cm).__exit__``, as
    ``contextlib.ExitStack`` looks it up) a plain function."""

    def __get__(self, w, owner=None):
        if w is None:
            return _exit
        e = _Exit(w)
        w._last_exit = weakref.ref(e)
        return e


def _exit(w, *exc):
    w._close()
    return False


_SUSPENDS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR  # frames that pause, off stack


def _on_stack(frame_id: int) -> bool:
    f = sys._getframe(1)
    while f is not None:
        if id(f) == frame_id:
            return True
        f = f.f_back
    return False


class Watch:
    """Records training while active; see :func:`watch`. ``events`` is the timeline, ``steps`` one dict per step."""

    __exit__ = _ExitSlot()

    def __init__(self, model, optimizer=None, retain=None, *, every: int = 1, sample: int = 20,
                 keep: int | None = 100, saved: bool = True, grads: bool = True, updates: bool = True):
        if not isinstance(model, torch.nn.Module):
            raise LensTypeError(f"watch() needs the model as an nn.Module, got {type(model).__name__}; "
                                "pass the module you train: lens.watch(model, optimizer=opt)")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise LensTypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self._retain = _retain_names(model, retain)
        for name, v in (("every", every), ("sample", sample), ("keep", keep)):
            if not (v is None and name == "keep") and (type(v) is not int or v < (0 if name == "keep" else 1)):
                raise LensValueError(f"{name} must be an int >= {0 if name == 'keep' else 1}"
                                     f"{' or None' if name == 'keep' else ''}, got {v!r}")
        for name, v in (("saved", saved), ("grads", grads), ("updates", updates)):
            if not isinstance(v, bool):
                raise LensTypeError(f"{name} must be True or False, got {v!r}")
        self._model = weakref.ref(model)
        self._opt = weakref.ref(optimizer) if optimizer is not None else None
        self._every, self._sample, self._keep = every, sample, keep
        self._flags = (saved, grads, updates)
        self._updates = updates
        self._has_opt = optimizer is not None
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._name_cache: dict = {}
        self._active = False
        self._tid = None
        self._state = "new"            # -> entering -> active -> closing -> done
        self._undo: list = []          # what __enter__ did, as functions that undo it (each idempotent)
        self._last_exit = None         # weakref to the latest _Exit handed out
        self._with_exit = None         # weakref to the _Exit of the `with` statement that entered, if one did
        self._frame = None             # id() of the frame that entered
        self._in_generator = False     # entered in a generator or coroutine frame (pauses off the stack)
        self._steps = _Steps(every, sample)
        self._timeline = _Timeline(keep)
        self._cur = self._new_step(0)
        self._saved = self._grads = self._forward = self._updates_rec = None
        self._top = None               # graph task id of the backward() being run, if any
        self._top_backward = False     # ... and whether it is a backward() (not a grad())
        self._tasks: set = set()       # graph tasks seen since it began (nested ones too)
        self._passes_hook = rec._no_compile(self._output_hook)
        self._ends_hook = rec._no_compile(self._task_ends)

    @property
    def events(self) -> list[Event]:
        """The timeline (at most `keep` steps' events, see :func:`watch`)."""
        return [Event(e) for e in self._timeline.iter(self._cur.step)]

    @property
    def steps(self) -> _Steps:
        """One summary dict per step (a read-only sequence)."""
        return self._steps

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Watch:
        if self._state != "new":
            raise LensRuntimeError("this Watch has already run: a Watch records one session; create a new "
                                   "lens.watch(model, ...) to record again")
        last, self._last_exit = self._last_exit, None
        e = last() if last is not None else None
        if e is not None and not e.called:  # the `with` statement's own exit object (holds the only ref to its guard)
            guard = _Guard.__new__(_Guard)  # no __init__ call: no frame an interrupt could enter
            guard.w, e.guard, self._with_exit = self, guard, last
        frame = sys._getframe(1)
        self._frame, self._in_generator = id(frame), bool(frame.f_code.co_flags & _SUSPENDS)
        model = self._model()
        if model is None:
            raise LensValueError("the model given to lens.watch() no longer exists: nothing but the watch referred "
                                 "to it, so it was freed. Keep it in a variable: model = Net(); "
                                 "with lens.watch(model, optimizer=opt): ...")
        opt = self._opt() if self._opt is not None else None
        for other in list(_ACTIVE):
            if other._abandoned():  # its `with` block was left without its exit running (an interrupt)
                other._close()
        for other in _ACTIVE:
            if other._model() is model or (opt is not None and other._opt is not None and other._opt() is opt):
                raise LensRuntimeError("lens.watch is already active on this model or optimizer: watches cannot be "
                                       "nested on the same one (the inner one's hooks would hide the outer one's); "
                                       "exit the first one first")
        saved, grads, updates = self._flags
        self._state = "entering"
        undo = self._undo
        try:
            self._tid = threading.get_ident()
            mark_thread(True)
            undo.append(self._unmark)
            _ACTIVE.append(self)
            undo.append(self._unregister)
            recorders = []
            if saved:
                recorders.append(self._saved_recorder())
            # without parameter hooks, a hook on the model's outputs notices each backward
            self._forward = rec.Forward(self, self._saved, outputs=not (grads and any(
                p.requires_grad for p in model.parameters())))
            recorders.append(self._forward)
            if grads:
                self._grads = rec.Gradients(self)
                recorders.append(self._grads)
            if self._retain:
                recorders.append(rec.Retain(self, self._retain))
            if opt is not None:
                self._updates_rec = rec.Updates(self, opt)
                recorders.append(self._updates_rec)
            for r in recorders:
                undo.append(r.undo)  # first: an install cut short is undone too
                r.install()
            self._active, self._state = True, "active"
        except BaseException:
            self._close()
            raise
        return self

    def _saved_recorder(self):
        self._saved = rec.SavedTensors(self)
        return self._saved

    def _unmark(self):
        if threading.get_ident() == self._tid and not any(o is not self and o._tid == self._tid for o in _ACTIVE):
            mark_thread(False)

    def _unregister(self):
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def _abandoned(self) -> bool:
        """Was this watch's `with` block left without its exit running (an interrupt at its first line)?"""
        if self._state != "active" or self._with_exit is None:
            return False
        e = self._with_exit()
        if e is None or e.called:
            return True
        # a frame that lives on in a traceback (a notebook keeps the last one) but no longer runs: the stack test reads
        # only this thread's stack, and a suspended generator's frame is on no stack, so neither is judged by it
        return self._tid == threading.get_ident() and not self._in_generator and not _on_stack(self._frame)

    def _close(self) -> None:
        """Undo what __enter__ did and finish the last step. Safe to call again, and it runs to the end even when
        an exception arrives meanwhile (a KeyboardInterrupt from a signal): that one is held until everything is
        undone, then raised. Each undo is idempotent, so one that was cut short simply runs again."""
        if self._state in ("new", "done"):
            return
        self._state, self._active = "closing", False
        held = None  # without its traceback: that holds this frame, which holds `held` (a cycle keeping them alive)
        undo, failed = self._undo, None
        while undo:
            try:
                while undo:
                    undo[-1]()
                    undo.pop()
            except BaseException as e:  # noqa: BLE001 - held, raised below
                held = held or e.with_traceback(None)
                if isinstance(e, Exception):  # an undo that fails by itself (not an interrupt): dropped at its 2nd
                    if failed is undo[-1]:
                        undo.pop()
                    failed = undo[-1] if undo else None
        if self._state == "closing":
            try:
                self._finish()
            except BaseException as e:  # noqa: BLE001 - held, raised below
                held = held or e.with_traceback(None)
        e = self._with_exit() if self._with_exit is not None else None
        if e is not None and e.guard is not None:
            e.guard.__class__ = _Disarmed  # closed: dropping it runs no __del__ (see _Guard)
        if held is not None:
            raise held

    def _finish(self):
        self._state = "done"
        self._grads_finish()
        cur = self._cur
        if cur.backward_passes or cur.saved_tensors or self._timeline.cur:
            self._close_step()
        self._saved = self._grads = self._forward = self._updates_rec = None
        self._top, self._tasks = None, set()

    # ------------------------------------------------------------------ backward passes
    def observing(self) -> bool:
        """Should a hook firing now record? Only in an active watch, in the watching thread's work, outside lens's own
        runs over a graph (lens.mirror, lens.check, trace(grads=True)) and the backward passes PyTorch runs inside
        them (a reentrant checkpoint's)."""
        return self._active and (threading.get_ident() == self._tid or in_marked_thread()) and not in_replay()

    def _output_hook(self, grad_outputs):
        """On the grad_fn of the model's outputs: every backward through the model runs it."""
        if self.observing():
            self._sync()

    def _sync(self) -> None:
        """Called by every hook that runs during backward: notices a new backward() (or grad()) call."""
        task = graph_task_id()
        if task not in self._tasks:
            self._task_begins(task)

    def _task_begins(self, task: int) -> None:
        call = engine_call(self._tid, nested=self._top is not None)
        nested = call is not None and call.nested
        if nested:
            self._tasks.add(task)
        else:
            if self._top is not None:  # the previous backward raised: its end callback never ran
                self._task_ends()
            self._top, self._tasks = task, {task}
            self._top_backward = call is None or call.accumulate
            if not self._has_opt:  # without an optimizer the backward's end ends the step
                queue_callback(self._ends_hook)
        cur = self._cur
        roots = call.roots if call is not None else ()
        if self._saved is not None and roots and cur.detailed:
            self._saved.attribute(roots)
        if not nested and self._top_backward:
            root = roots[0] if len(roots) == 1 else None
            if type(root) is torch.Tensor and root.numel() == 1:  # read when the step is folded (GPU: in batches)
                cur.loss = root.detach() if root.is_cpu and not rec.DEFER_ON_CPU else \
                    rec.defer(root.detach().reshape(1).clone())[0]
            cur.backward_passes += 1
            if self._grads is not None:
                self._grads.pending = True
            if cur.detailed:
                self._timeline.cur.append((_backward_event, cur.step, cur.loss))

    def _task_ends(self) -> None:
        """The end callback of the top-level backward (or a later call finishing one whose callback never ran)."""
        if self._top is None:
            return
        backward, self._top, self._tasks = self._top_backward, None, set()
        if backward and self._state == "active" and not self._has_opt:
            # without an optimizer a backward ends the step (with one, optimizer.step() does: the gradient norms
            # are measured there, as the step receives them; measuring inside the engine's callback costs more)
            self._grads_finish()
            self._close_step()

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

    def _names_of(self, ps: list) -> list:
        """The parameters' names (cached per list of parameters: optimizer groups rarely change)."""
        key = (id(ps), len(ps), id(ps[0]) if ps else None, id(ps[-1]) if ps else None)
        hit = self._name_cache.get(key)
        if hit is None:
            if len(self._name_cache) > 64:
                self._name_cache.clear()
            hit = self._name_cache[key] = [self._name(p) for p in ps]
        return hit

    def _grad_norms(self, ps: list) -> list:
        """The norms of the parameters' .grad: those measured after backward when unchanged since, else now."""
        names = self._names_of(ps)
        out = [self._grads.norm_now(n, p.grad) for n, p in zip(names, ps)] if self._grads is not None else \
            [None] * len(ps)
        missing = [i for i, v in enumerate(out) if v is None and ps[i].grad.layout == torch.strided]
        if missing:
            for i, v in zip(missing, rec.norms([ps[i].grad.detach() for i in missing])):
                out[i] = v
        return out

    def _emit(self, e: dict) -> dict:
        self._timeline.cur.append(e)
        return e

    def _note(self, message: str) -> None:
        if message not in self._cur.notes:
            self._cur.notes.append(message)
            self._emit({"kind": "note", "step": self._cur.step, "message": message})

    def _step_begins(self):
        """optimizer.step() is about to run: the step's backward passes are over."""
        if self._top is not None and graph_task_id() == -1:  # its end callback never ran (it raised)
            self._top, self._tasks = None, set()
        self._grads_finish()

    def _grads_finish(self):
        if self._grads is not None:
            self._grads.finish()

    def _new_step(self, step: int) -> _Step:
        return _Step(step, step % self._every == 0, self._steps.detailed(step))

    def _close_step(self):
        cur = self._cur
        if self._grads is not None:
            self._grads.forget()
        self._steps.add(cur)
        self._timeline.close(cur.step)
        self._cur = new = self._new_step(cur.step + 1)
        if new.detailed != cur.detailed:
            for r in (self._forward, self._grads, self._updates_rec):
                if r is not None:
                    r.step(new)

    def record_loss(self, loss) -> None:
        """Tell the watch this step's loss where its backward has none to read (``loss.backward()`` on a one-element
        loss records it by itself). Call it within the step: before ``optimizer.step()``, or without an optimizer
        before the backward (which ends the step): ``w.record_loss(loss); out.backward(weights)``."""
        self._cur.loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)

    # ------------------------------------------------------------------ output
    def to_records(self) -> list[dict]:
        """The events as flat dicts (tuples become lists), ready for JSON, CSV or pandas."""
        return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in e.items()}
                for e in self._timeline.iter(self._cur.step)]

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
        for e in self._timeline.iter(self._cur.step):
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


def _backward_event(step, loss) -> dict:
    if type(loss) is torch.Tensor:
        loss = loss.item() if loss.numel() == 1 and loss.layout == torch.strided else None
    return {"kind": "backward", "step": step, "loss": value(loss)}


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


def watch(model, *, optimizer=None, retain=None, every: int = 1, sample: int = 20, keep: int | None = 100,
          saved: bool = True, grads: bool = True, updates: bool = True) -> Watch:
    """Log saved tensors, gradient accumulation, retained gradients and optimizer updates while training.

    Use as a context manager; a step ends at each ``optimizer.step()`` (or each ``backward()`` when no
    optimizer is given). ``retain`` names modules (as in ``model.named_modules()``) whose outputs get
    ``retain_grad()``. Every step records its loss and backward passes; the detailed steps (the first ``sample``
    steps, then every ``sample``-th; ``sample=1``: every step) also the statistics that read whole tensors
    (gradient, update and parameter norms, momentum buffers, Adam's moments and step sizes, the parameter copy
    that measures an update), the zero_grad() check and the timeline (``events``: pack, unpack, backward,
    accumulate, retain, update). ``every=N`` keeps only the detailed steps that are multiples of N. ``keep``
    bounds the timeline to that many steps (None: all). ``saved`` / ``grads`` / ``updates`` switch hook groups
    off. Update norms of plain and momentum SGD come from lr·‖grad‖ / lr·‖buffer‖; for other optimizers the
    watch keeps one copy of the parameters to measure before − after (``updates=False`` avoids it). Saved
    tensors are those of the model's forward. Event kinds are listed in ``autogradlens.watching.EVENTS``, step
    fields in ``STEP_SCALARS``, ``STEP_PER_PARAM`` and ``STEP_DERIVED``.

    Raises:
        LensTypeError: `model` is not an ``nn.Module``, `optimizer` not an optimizer, `retain` not names.
        LensValueError: `retain` names a module the model lacks; `every` or `sample` < 1; `keep` < 0.

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
    return Watch(model, optimizer, retain, every=every, sample=sample, keep=keep, saved=saved, grads=grads,
                 updates=updates)
