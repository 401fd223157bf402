"""mirror, trace(grads=True) and check observe without disturbing: no scan of the heap (other threads' objects are
left alone), no .grad written (retain_grad() tensors wherever they are held), no process-wide state left changed
by Ctrl-C, the same answers from many threads at once."""

import functools
import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _mlp_loss(seed=0, n=6):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return F.cross_entropy(m(torch.randn(n, 5, dtype=torch.float64)), torch.randint(0, 3, (n,))), m


def test_no_heap_scan(monkeypatch):
    """Finding retain_grad() tensors by scanning gc.get_objects() broke other threads (SystemError in a thread
    building a tuple from a generator); nothing may scan the heap now."""
    def refuse(*a, **k):
        raise AssertionError("gc.get_objects() was called")
    monkeypatch.setattr(gc, "get_objects", refuse)
    loss, m = _mlp_loss()
    h = loss.grad_fn.next_functions[0][0]  # any graph of 64+ nodes used to get the full scan
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = x
    for _ in range(80):
        y = torch.tanh(y) * 1.01
    assert lens.mirror(y.sum(), params={"x": x}).ok and lens.mirror(loss, params=m).ok
    lens.trace(y.sum(), grads=True)
    assert h is not None


def test_retained_grads_are_untouched_wherever_they_are_held():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    box = SimpleNamespace()
    box.act = x.tanh()  # an activation kept on an object attribute: the common way to inspect one
    box.act.retain_grad()
    old = x.exp()
    old.retain_grad()
    loss = (box.act * old).sum()
    loss.backward(retain_graph=True)
    before_old = old.grad
    gc.collect()
    gc.collect()  # `old`, `box` and its tensor now sit in the collector's oldest generation
    box.act.grad = None
    for _ in range(2):
        assert lens.mirror(loss, params={"x": x}).ok
        lens.trace(loss, params={"x": x}, grads=True)
    assert box.act.grad is None and old.grad is before_old and torch.equal(old.grad, x.tanh().detach())
    x_grad = x.grad.clone()
    lens.mirror(loss, params={"x": x})
    assert torch.equal(x.grad, x_grad)


def test_a_retained_tensor_keeps_its_grad_object_under_mirror():
    loss, m = _mlp_loss()
    h = loss.grad_fn.next_functions[0][0]
    assert h is not None
    w = m[0].weight
    w.grad = torch.ones_like(w)
    g = w.grad
    lens.mirror(loss, params=m)
    assert w.grad is g and torch.equal(g, torch.ones_like(w))


BLOCK = nn.Sequential(nn.Linear(3, 3), nn.Tanh())  # reached by a checkpointed function through its globals


def _body(t):
    return BLOCK(t) * 2


@pytest.mark.parametrize("region", ["module", "closure", "global", "lambda", "partial", "method"])
def test_a_reentrant_checkpoints_inner_backward_leaves_every_grad_as_it_was(region):
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    lin = nn.Linear(3, 3)

    def closure(t):
        return lin(t).sin()
    fn, block = {"module": (lin, lin), "closure": (closure, lin), "global": (_body, BLOCK[0]),
                 "lambda": (lambda t: lin(t) + 1, lin), "partial": (functools.partial(F.linear, weight=lin.weight,
                                                                                      bias=lin.bias), lin),
                 "method": (lin.forward, lin)}[region]
    x = torch.randn(2, 3, requires_grad=True)
    block.weight.grad = torch.ones(3, 3)  # one .grad held from before, one None
    held, values = block.weight.grad, block.weight.grad.clone()
    for look in (lambda loss: lens.mirror(loss), lambda loss: lens.trace(loss, grads=True),
                 lambda loss: lens.check(loss, {"x": (x, torch.ones(2, 3))})):
        look(checkpoint(fn, x, use_reentrant=True).sum())  # none of the region's parameters named
        assert block.weight.grad is held and torch.equal(held, values) and block.bias.grad is None
        assert x.grad is None


def test_threads_mirroring_at_once_agree_with_serial_runs():
    graphs = {s: _mlp_loss(s, n=4 + s % 3) for s in range(16)}  # built first: torch's random generator is global

    def rows(seed):
        loss, m = graphs[seed]
        rep = lens.mirror(loss, params=m, mode="tensor")
        return [(r["id"], r["status"], r["exact"], r["max_abs"], r.get("e2e_max_abs")) for r in rep.rows]

    serial = {s: rows(s) for s in graphs}
    got, errors = {}, []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible

    def work(seeds):
        try:
            for s in seeds:
                got[s] = rows(s)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
    try:
        threads = [threading.Thread(target=work, args=(range(i, 16, 8),)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors and got == serial
    assert gc.isenabled()


def test_a_thread_building_tuples_beside_a_mirror_loop_never_fails():
    r = _run("""
        import threading, time, torch, autogradlens as lens
        stop, errors, made = False, [], [0]
        def build():
            while not stop:
                try:
                    tuple(i for i in range(50)); made[0] += 1
                except SystemError as e:
                    errors.append(e)
        t = threading.Thread(target=build); t.start()
        x = torch.randn(4, dtype=torch.float64, requires_grad=True)
        end = time.monotonic() + 4
        n = 0
        while time.monotonic() < end or n < 3:  # (the builder thread may hold the GIL most of the time)
            y = x
            for _ in range(70):
                y = torch.tanh(y) * 1.01
            lens.mirror(y.sum(), params={"x": x}, mode="tensor"); n += 1
        stop = True; t.join()
        print(n, made[0], len(errors))
    """)
    assert r.returncode == 0, r.stderr
    n, made, errors = map(int, r.stdout.split())
    assert n >= 3 and made > 100 and errors == 0


def test_ctrl_c_anywhere_in_mirror_leaves_no_state_behind():
    """A repeating timer raises KeyboardInterrupt at random points of many mirror and trace(grads=True) calls:
    afterwards the collector is on, no .grad was written, and the next call works."""
    r = _run("""
        import gc, signal, torch, autogradlens as lens
        armed = [False]
        def interrupt(*a):  # one KeyboardInterrupt per arming, wherever it lands
            if armed[0]:
                armed[0] = False
                raise KeyboardInterrupt
        signal.signal(signal.SIGALRM, interrupt)
        x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        h = (x @ w).tanh(); h.retain_grad()
        loss = (h * h).sum()
        lens.mirror(loss, params={"x": x, "w": w})   # everything loaded before the timer starts
        hit = broken = 0
        for i in range(300):
            try:
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, 1e-5 * (1 + i % 97))
                    if i % 3 == 2:
                        lens.trace(loss, params={"x": x, "w": w}, grads=True)
                    else:
                        lens.mirror(loss, params={"x": x, "w": w}, mode="scalar" if i % 3 else "tensor")
                finally:
                    armed[0] = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                hit += 1
            if not gc.isenabled() or h.grad is not None or x.grad is not None or w.grad is not None:
                broken += 1
                gc.enable()
        print(hit, broken, lens.mirror(loss, params={"x": x, "w": w}).ok)
    """)
    assert r.returncode == 0, r.stderr
    hit, broken, ok = r.stdout.split()
    assert int(hit) > 30 and int(broken) == 0 and ok == "True"


@pytest.mark.parametrize("where", ["pause", "resume"])
def test_the_collector_is_restored_when_an_interrupt_lands_while_pausing_or_resuming(monkeypatch, where):
    from autogradlens import _guard
    calls = []
    real = getattr(_guard, f"_{where}")

    def flaky(token):
        calls.append(token)
        if len(calls) == 1:
            real(token)
            raise KeyboardInterrupt  # after the state changed: the undo must still happen
        real(token)
    monkeypatch.setattr(_guard, f"_{where}", flaky)
    with pytest.raises(KeyboardInterrupt):
        with _guard.collector_paused():
            pass
    assert gc.isenabled()


def test_an_interrupt_at_any_line_of_pausing_or_resuming_leaves_the_collector_on():
    """Ctrl-C at each line the interpreter runs while a block pauses the collector and resumes it (the guard's
    own code and weakref's): afterwards the collector is on and no pause is left registered. (A signal landing
    after __enter__'s last call, or in the middle of a finalizer's bookkeeping, once left it off for good.) Not
    inside _pause and _resume: their work is under a lock whose `with` a signal cannot split (a tracer can, at the
    line events of the statement's exit); the test below interrupts them right after they change the collector."""
    import sys

    from autogradlens import _guard

    def block():
        with _guard.collector_paused():
            pass
    lines, n = [], 0
    files = {_guard.__file__, weakref.__file__, __file__}
    sys.settrace(lambda frame, event, arg: (lambda f, e, a: lines.append(1)) if event == "call" else None)
    try:
        block()
    finally:
        sys.settrace(None)
    assert len(lines) > 10
    while True:
        seen = [0]

        def tracer(frame, event, arg, n=n):
            if frame.f_code in (_guard._pause.__code__, _guard._resume.__code__) or \
                    frame.f_code.co_filename not in files:  # (not in a gc callback another library installed)
                return None

            def local(f, e, a):
                if e == "line":
                    seen[0] += 1
                    if seen[0] == n + 1:
                        raise KeyboardInterrupt
                return local
            return local
        sys.settrace(tracer)
        try:
            block()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        assert gc.isenabled() and not _guard._pausers, f"interrupt at line event {n + 1}"
        if seen[0] <= n:  # the whole block ran without reaching line n + 1: every line was tried
            break
        n += 1
    assert 10 < n < 1000


@pytest.mark.parametrize("fn", ["disable", "enable"])
def test_an_interrupt_right_after_the_collector_changes_is_undone(monkeypatch, fn):
    """Ctrl-C landing just after mirror paused the collector (or just as it turns it back on) once left it off."""
    real, fired = getattr(gc, fn), []

    def interrupted():
        real()
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt
    monkeypatch.setattr(gc, fn, interrupted)
    loss, m = _mlp_loss()
    with pytest.raises(KeyboardInterrupt):
        lens.mirror(loss, params=m)
    monkeypatch.undo()
    assert fired and gc.isenabled() and lens.mirror(loss, params=m).ok
