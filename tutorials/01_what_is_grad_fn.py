# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · What is `grad_fn`?
#
# The neuron from the micrograd lecture, written in PyTorch, and the graph PyTorch builds behind it.
# Goal: see that `grad_fn` is a node in a **graph** (a DAG, not a linked list), that leaves end in
# `AccumulateGrad` (where `.grad` is written), and what each node **saves** for the backward pass.

# %%
import torch

import autogradlens as lens
from autogradlens.examples import NEURON

x1, x2, w1, w2, b = (torch.tensor(NEURON[k], dtype=torch.float64, requires_grad=True)
                     for k in ("x1", "x2", "w1", "w2", "b"))
n = x1 * w1 + x2 * w2 + b
o = torch.tanh(n)
print(f"o = {o.item():.4f}")

# %% [markdown]
# `o.grad_fn` is the node that will run tanh's backward. Its `next_functions` point at the nodes that
# made its inputs: that is how autograd walks back to the leaves.

# %%
print(type(o.grad_fn).__name__, "->", [(type(f).__name__, nr) for f, nr in o.grad_fn.next_functions])

t = lens.trace(o, params={"x1": x1, "x2": x2, "w1": w1, "w2": w2, "b": b})
print(t.to_text())

# %% [markdown]
# A linked list would give each node one successor. `AddBackward0` has two, and a value used twice
# (say `a * a`) gives two edges to the same node: the graph is a DAG.

# %%
g = t.graph
for node in g.nodes:
    print(f"{node:18s} -> {sorted(g.successors(node))}")
a = torch.tensor(3.0, requires_grad=True)
print("edges from a*a to a:", lens.trace(a * a).graph.number_of_edges("MulBackward0:0", "AccumulateGrad:0"))

# %% [markdown]
# ## What is saved, and why
# tanh's derivative is 1 - tanh², so `TanhBackward0` keeps its own **result**. `x1 * w1` needs each
# factor for the other's gradient, so `MulBackward0` keeps both inputs (the leaf tensors themselves).

# %%
for node, d in g.nodes(data=True):
    for s in d["saved"]:
        print(f"{node:16s} saves {s['name']:6s} shape={s['shape']} own output={s['is_output']} "
              f"alias={s['alias']}")

# %% [markdown]
# ## Backward writes `.grad` at the leaves

# %%
o.backward()
print({k: round(v.grad.item(), 4) for k, v in dict(x1=x1, x2=x2, w1=w1, w2=w2).items()})
print("after backward the saved tensors are", {s["state"] for _, d in lens.trace(o).graph.nodes(data=True)
                                              for s in d["saved"]})

# %% [markdown]
# ## The picture
# In a notebook a `Trace` shows itself. Boxes are nodes, labelled with the same ids as `to_text()`;
# arrows follow `next_functions`, the way gradients flow (from the loss to the leaves); the pink notes
# are the saved tensors, with the slot names on the dashed lines.

# %%
t
