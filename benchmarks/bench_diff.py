"""diff time vs graph size: two chains of matmul + activation that differ in one activation.

    python benchmarks/bench_diff.py
"""

from __future__ import annotations

import time

import torch

import autogradlens as lens


def chain(layers: int, change_at=None):
    torch.manual_seed(0)
    ws = [torch.randn(4, 4, requires_grad=True) for _ in range(layers)]
    h = torch.randn(2, 4, requires_grad=True)
    for i, w in enumerate(ws):
        h = torch.tanh(h @ w) if i == change_at else torch.relu(h @ w)
    return lens.trace(h.sum(), params={f"w{i}": w for i, w in enumerate(ws)})


def main():
    print(f"{'nodes':>7s} {'diff ms':>9s} {'ms / 1k nodes':>14s}  result")
    for layers in (33, 333, 1667, 3333, 6667):
        a, b = chain(layers), chain(layers, change_at=layers // 2)
        t0 = time.perf_counter()
        d = lens.diff(a, b)
        ms = (time.perf_counter() - t0) * 1e3
        c = d.changed[0] if len(d.changed) == 1 and not d.added and not d.removed else None
        res = f"exactly one change: {a.graph.nodes[c['a']]['type']} -> {b.graph.nodes[c['b']]['type']}" if c \
            else f"{len(d.changed)} changed, {len(d.added)} added, {len(d.removed)} removed"
        print(f"{len(a):7d} {ms:9.1f} {ms / len(a) * 1e3:14.1f}  {res}")


if __name__ == "__main__":
    main()
