"""Trace speed vs the floor (a bare next_functions walk) and vs torchviz, on the same graphs.

    python benchmarks/bench_trace.py            # prints a table of medians and ratios

Targets (issue 2): trace <= 0.5x torchviz.make_dot(show_attrs=True, show_saved=True); <= 10x the bare walk.
The "nx build" column is the cost of only inserting the finished nodes and edges (with their attribute
dicts) into a networkx.MultiDiGraph: a floor for any trace that returns the graph DESIGN.md asks for.
"""

from __future__ import annotations

import warnings

import networkx as nx
import torch
import torch.nn as nn
from _timing import median_time  # (this folder)

import autogradlens as lens


def mlp(layers: int):
    torch.manual_seed(0)
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(32, 32), nn.ReLU()]
    m = nn.Sequential(*mods, nn.Linear(32, 10))
    loss = nn.functional.cross_entropy(m(torch.randn(16, 32)), torch.randint(0, 10, (16,)))
    return loss, m


def transformer(blocks: int = 4):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = nn.TransformerEncoder(layer, num_layers=blocks, enable_nested_tensor=False)
    return m(torch.randn(2, 10, 32)).pow(2).mean(), m


def bare_walk(loss):
    seen, stack = {loss.grad_fn}, [loss.grad_fn]
    while stack:
        for f, _ in stack.pop().next_functions:
            if f is not None and f not in seen:
                seen.add(f)
                stack.append(f)
    return len(seen)


def nx_build(g):
    nodes = list(g.nodes(data=True))
    edges = list(g.edges(keys=True, data=True))

    def build():
        h = nx.MultiDiGraph()
        h.add_nodes_from(nodes)
        h.add_edges_from(edges)
    return build




def main():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchviz import make_dot
    except ImportError:
        make_dot = None
    cases = [("MLP 10 layers", lambda: mlp(10)), ("MLP 100 layers", lambda: mlp(100)),
             ("MLP 1000 layers", lambda: mlp(1000)), ("transformer x4", transformer)]
    print(f"{'graph':18s} {'nodes':>6s} {'walk ms':>9s} {'nx build':>9s} {'trace ms':>9s} {'torchviz ms':>12s} "
          f"{'trace/walk':>10s} {'nx/walk':>8s} {'trace/torchviz':>15s}")
    for name, build in cases:
        loss, m = build()
        params = dict(m.named_parameters())
        repeat = 3 if "1000" in name else 7
        walk = median_time(lambda loss=loss: bare_walk(loss), repeat)
        tr = median_time(lambda loss=loss, m=m: lens.trace(loss, params=m), repeat)
        t = lens.trace(loss, params=m)
        nodes = t.summary()["nodes"]
        floor = median_time(nx_build(t.graph), repeat)
        if make_dot is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tv = median_time(lambda loss=loss, p=params: make_dot(loss, params=p, show_attrs=True,
                                                                     show_saved=True), repeat)
                tv_s, ratio = f"{tv * 1e3:12.1f}", f"{tr / tv:15.2f}"
            except RecursionError:
                tv_s, ratio = f"{'RecursionErr':>12s}", f"{'(torchviz died)':>15s}"
        else:
            tv_s, ratio = f"{'(absent)':>12s}", f"{'-':>15s}"
        print(f"{name:18s} {nodes:6d} {walk * 1e3:9.2f} {floor * 1e3:9.2f} {tr * 1e3:9.1f} {tv_s} {tr / walk:10.1f} "
              f"{floor / walk:8.1f} {ratio}")


if __name__ == "__main__":
    main()
