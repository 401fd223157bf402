"""A deep graph stays freeable after autogradlens has walked it (issue 21, item 5).

In torch 2.13 a node Python has seen keeps its wrapper for life, and freeing a chain of such nodes recurses once
per node: a graph ~60,000 nodes deep kills the process when its last reference goes (SIGSEGV), and on a thread
with a 128 KB stack about 1,000 deep does. Every walk sees every node, so lens.trace, lens.mirror, lens.diff and
the watch's attribution walk would leave such a graph unfreeable. Each check runs in a subprocess (a crash is its
exit status) on a graph built as users build them: an RNN cell applied in a Python loop.
"""

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RNN = textwrap.dedent('''
    import sys, threading, torch
    import autogradlens as lens

    class RNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 3, dtype=torch.float64) / 3)

        def forward(self, xs):
            h = torch.zeros(1, 3, dtype=torch.float64)
            for x in xs:  # one cell per step: mm, add, tanh
                h = torch.tanh(x + h @ self.w)
            return h.pow(2).sum(), h

    def graph(steps):
        torch.manual_seed(0)
        model = RNN()
        loss, h = model(torch.randn(steps, 1, 3, dtype=torch.float64))
        return model, loss, h

    TOOLS = {
        "trace": lambda model, loss: lens.trace(loss, params=model),
        "mirror": lambda model, loss: lens.mirror(loss, params=model, mode="tensor"),
        "diff": lambda model, loss: lens.diff(loss, loss),
    }
''')


def run(code: str, stack: int | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `code` after RNN in a fresh interpreter; `stack`: the main thread's stack size in bytes."""
    def small_stack():
        resource.setrlimit(resource.RLIMIT_STACK, (stack, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-c", RNN + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=small_stack if stack else None)


def test_a_walked_deep_rnn_graph_is_freed_on_a_small_thread_stack():
    """1,500 nodes deep, freed on a thread with a 128 KB stack (the recursive free overflows it from about 1,000
    nodes), after each tool and after a watched backward; the last reference goes from the loss, or from the last
    hidden state (whatever the user drops last starts the free)."""
    r = run('''
        threading.stack_size(128 * 1024)

        def free_in_a_thread(box):
            t = threading.Thread(target=box.clear)
            t.start()
            t.join()

        for name in ["trace", "mirror", "diff", "watch"]:
            for order in ("loss last", "h last"):
                model, loss, h = graph(500)
                if name == "watch":
                    with lens.watch(model) as w:
                        loss.backward()
                    result = w
                else:
                    result = TOOLS[name](model, loss)
                box = [result, h, loss] if order == "loss last" else [result, loss, h]
                del result, loss, h
                free_in_a_thread(box)
                print(name, order, "freed", flush=True)
    ''')
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert r.stdout.count("freed") == 8


def test_a_traced_rnn_graph_is_freed_on_the_main_thread():
    """The same on the main thread, its stack limited to 1 MB (8 MB, the usual limit, overflows at ~60,000 nodes:
    a graph 8 times deeper); the queue of held nodes is empty once Python code runs after the free."""
    r = run('''
        model, loss, h = graph(4_000)
        t = lens.trace(loss, params=model)
        assert len(t) > 12_000, len(t)
        del loss, h
        print("freed", flush=True)
        from autogradlens._freeing import _Q
        print("queued", len(_Q.kids))
    ''', stack=2**20)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "freed" in r.stdout and "queued 0" in r.stdout, r.stdout


def test_a_shallow_graph_is_left_as_pytorch_made_it():
    """Holds go only on graphs deeper than _freeing.DEEP: a normal model's nodes get no metadata entry."""
    import torch

    import autogradlens as lens
    from autogradlens._freeing import DEEP, KEY
    from autogradlens.tracing import walk

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(20)])
    loss = model(torch.randn(2, 4)).sum()
    lens.trace(loss, params=model)
    order, nexts = walk([loss.grad_fn])
    assert not any(KEY in fn.metadata for fn in order) and 60 < len(order) < DEEP


@pytest.mark.parametrize("steps,deep", [(200, False), (400, True)])
def test_deep_graphs_get_a_hold_on_every_node_with_children(steps, deep):
    import torch

    from autogradlens._freeing import KEY
    from autogradlens.tracing import walk

    h = w = torch.randn(3, requires_grad=True)
    for _ in range(steps):
        h = torch.tanh(h * w + 1)  # mul, add, tanh: 3 nodes per step
    order, nexts = walk([h.sum().grad_fn])
    held = [KEY in fn.metadata for fn, nf in zip(order, nexts) if any(f is not None for f, _ in nf)]
    assert all(held) if deep else not any(held)
