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
# # 16 · Why normalisation?
#
# A deep stack of Linear + sigmoid: sigmoid's derivative is at most 1/4 and each layer's outputs sit in a
# narrow band, so the gradient that reaches the first layers shrinks layer after layer, by orders of
# magnitude. Goal: see it on activation statistics and on gradient flow, then see BatchNorm (which keeps
# every layer's pre-activations at mean 0, std 1 over the batch) keep the gradient the same size in
# every layer.

# %%
import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens
from autogradlens import plots


def deep(norm: bool, depth: int = 8, width: int = 64):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, std=1 / width**0.5)  # unit-variance outputs for unit-variance inputs
        layers += [lin] + ([nn.BatchNorm1d(width)] if norm else []) + [nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


torch.manual_seed(1)
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
plain, normed = deep(norm=False), deep(norm=True)

# %% [markdown]
# ## Activations without normalisation
# After the first layer every sigmoid's outputs huddle in a narrow band (a small std): the next layer sees
# almost the same input for every example, and the slope it passes back is at most 1/4.

# %%
plots.activations(plain, x)

# %% [markdown]
# ## Activations with BatchNorm
# Before each sigmoid, BatchNorm subtracts the batch mean and divides by the batch std: every layer's
# outputs spread over the same range.

# %%
plots.activations(normed, x)

# %% [markdown]
# ## Gradient flow
# One backward pass each, traced with `grads=True`: the RMS gradient of every weight, first layer on the
# left. Without normalisation it falls by about 10x per layer towards the input (the first layer barely
# learns); with BatchNorm it stays the same size.

# %%
traces = {name: lens.trace(F.cross_entropy(m(x), y), params=m, grads=True)
          for name, m in (("no normalisation", plain), ("BatchNorm", normed))}
for name, t in traces.items():
    print(f"{name:17s} |grad| of the first layer's weight: {t.graph.nodes['param:0.weight']['grad']['norm']:.2e}")
plots.gradient_flow(traces)

# %% [markdown]
# ## Where it happens in the graph
# The BatchNorm network's graph with the gradient on every node (colour: log of its norm). Each
# `NativeBatchNormBackward0` rescales the gradient on the way back, as it rescaled the activations forward.

# %%
traces["BatchNorm"]
