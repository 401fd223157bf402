"""Deep autograd graphs stay freeable after autogradlens has walked them.

Why: in torch 2.13 an autograd node that Python has seen (through ``grad_fn`` or ``next_functions``) keeps its
Python wrapper for the rest of its life, and a node with a wrapper is freed by the wrapper's deallocation, which
frees the next node the same way: freeing a chain of seen nodes recurses once per node in C, and a chain about
50,000 nodes deep overflows the 8 MB main-thread stack (SIGSEGV; 1,500 deep on a 256 KB thread stack). Plain
PyTorch does the same once ``next_functions`` was read on every node; PyTorch's own iterative freeing
(``deleteNode``) only runs for nodes Python never saw. A graph tool sees every node.

What: after a walk of a graph deeper than ``DEEP`` nodes, every node with children gets, in its ``metadata`` dict
(which PyTorch keeps on the node and frees with it), a :class:`_Hold` of its children's wrappers under
:data:`KEY`. A node frees its metadata before its edges, so when it is freed its hold moves the children to a
queue first; the edges then let go of children that the queue still holds, and nothing recurses. The queue is
emptied by a pending call (``Py_AddPendingCall``), which the interpreter runs as soon as the code that freed the
node has returned, one node at a time: each node freed there queues its own children the same way (a loop in
place of the recursion). A pending call that runs while a node is still being freed (inside a hold's
``__del__``) comes back later. Graphs up to ``DEEP`` nodes deep are left untouched.
"""

from __future__ import annotations

import ctypes

KEY = "autogradlens.free"  # the key in grad_fn.metadata
DEEP = 1_000  # longest path (nodes) from which a walked graph gets holds: ~170 KB of C stack to free at worst


class _Queue:
    """The children of freed nodes, waiting to be freed in a loop (one per process, used under the GIL). Everything
    it needs hangs off it, so it still works while the interpreter shuts down (module globals cleared)."""

    def __init__(self, add):
        self.kids: list = []
        self.depth = 0          # holds being freed right now: their node's edges still hold the children
        self.draining = False
        self.scheduled = False
        self.add = add          # Py_AddPendingCall
        self.callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(self.drain)
        self.pointer = ctypes.cast(self.callback, ctypes.c_void_p)

    def schedule(self, force: bool = False) -> None:
        if force or not (self.draining or self.scheduled):
            self.scheduled = self.add(self.pointer, None) == 0  # -1: queue full; the next freed node retries

    def drain(self, _arg) -> int:
        """The pending call: free the queued nodes one at a time (a freed node's hold queues its children)."""
        if self.depth or self.draining:  # too early: a node is still being freed; run again once it has been
            self.schedule(force=True)
            return 0
        self.scheduled, self.draining = False, True
        try:
            kids = self.kids
            while kids:
                kids.pop()
        except KeyboardInterrupt:  # a pending call cannot raise: finish later, and deliver the interrupt
            import _thread

            _thread.interrupt_main()
            self.schedule(force=True)
        finally:
            self.draining = False
        return 0


def _pending_call():
    try:
        add = ctypes.pythonapi.Py_AddPendingCall
    except (AttributeError, OSError):  # not CPython: no holds (graphs are left as PyTorch has them)
        return None
    add.argtypes, add.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
    return add


_ADD = _pending_call()
_Q = _Queue(_ADD)


class _Hold:
    """A node's children, kept alive until the node's edges have let go of them (see the module docstring)."""
    __slots__ = ("kids",)

    def __init__(self, kids: tuple):
        self.kids = kids

    def __del__(self, q=_Q):  # a default: still there while the interpreter shuts down
        q.depth += 1
        try:
            q.kids.extend(self.kids)
            self.kids = ()
            q.schedule()
        finally:
            q.depth -= 1


def keep_freeable(order: list, nexts: list) -> bool:
    """Give every node of a walked graph deeper than DEEP a hold on its children (once); True if it did.

    `order` are the nodes (grad_fns), `nexts` their ``next_functions`` in the same order."""
    if _ADD is None or len(order) <= DEEP or _depth(order, nexts) <= DEEP:
        return False
    for fn, nf in zip(order, nexts):
        kids = tuple(f for f, _ in nf if f is not None)
        if kids:
            meta = fn.metadata
            if KEY not in meta:
                meta[KEY] = _Hold(kids)
    return True


def _depth(order: list, nexts: list) -> int:
    """The number of nodes on the longest path (Kahn's order over the walked nodes)."""
    index = {fn: i for i, fn in enumerate(order)}
    kids = [[index[f] for f, _ in nf if f is not None] for nf in nexts]
    indeg = [0] * len(order)
    for ks in kids:
        for k in ks:
            indeg[k] += 1
    depth = [1] * len(order)
    ready = [i for i, d in enumerate(indeg) if d == 0]
    best = 1
    while ready:
        i = ready.pop()
        d = depth[i] + 1
        for k in kids[i]:
            if depth[k] < d:
                depth[k] = d
                best = max(best, d)
            indeg[k] -= 1
            if not indeg[k]:
                ready.append(k)
    return best
