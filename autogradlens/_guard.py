"""Process-wide state a tool changes for a moment (the garbage collector paused) is put back whatever happens:
also when another thread does the same at the same time, and when Ctrl-C (or any exception a signal handler
raises) lands in the middle of putting it back.

    >>> import gc
    >>> with collector_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
"""

from __future__ import annotations

import gc
import threading
import weakref

__all__ = ["collector_paused", "undo"]


def undo(*steps) -> None:
    """Run each idempotent undo step to its end; an exception that interrupts one (KeyboardInterrupt from a
    signal) is held until every step is done, then raised."""
    pending = None
    for step in steps:
        while True:
            try:
                step()
                break
            except BaseException as e:  # noqa: BLE001 - finish undoing first, then raise it
                pending = pending or e
    if pending is not None:
        raise pending


_lock = threading.Lock()
_pausers: set = set()   # one token per block that wants the collector paused, across threads
_restore = [False]      # whether the collector was on when the first of them paused it


def _pause(token) -> None:
    with _lock:
        if not _pausers:
            _restore[0] = gc.isenabled()
        _pausers.add(token)
        gc.disable()


def _resume(token) -> None:
    with _lock:
        _pausers.discard(token)
        if not _pausers and _restore[0]:
            gc.enable()


class collector_paused:
    """The garbage collector off inside (many short-lived objects, no cycles: a collection would only rescan the
    heap), back on when the last of the blocks that paused it, in any thread, ends.

    Ctrl-C may land anywhere: right after the pause inside __enter__ (where the interpreter handles pending signals
    after a call; undone there), inside the resume (each step is idempotent and run again), or at the very start of
    __exit__, before it does anything: then the resume runs when the unexited block is dropped (weakref.finalize)."""

    __slots__ = ("_token", "_finalizer", "__weakref__")

    def __enter__(self):
        self._token = token = object()
        self._finalizer = weakref.finalize(self, _resume, token)
        try:
            _pause(token)
        except BaseException:
            undo(lambda: _resume(token), self._finalizer.detach)
            raise
        return self

    def __exit__(self, *exc) -> None:
        token = self._token
        undo(lambda: _resume(token), self._finalizer.detach)
