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
# A deep stack of Linear + tanh with the default initialisation: activations drift towards ±1 (tanh
# saturates, its derivative 1 - t² goes to 0) or shrink towards 0, and the gradient that reaches the first
# layers shrinks layer after layer. Goal: see it on activation statistics and gradient flow, then see
# BatchNorm keep every layer's pre-activations at mean 0, std 1.

# %%
import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens
from autogradlens import plots


def deep(norm: bool, depth: int = 8, width: int = 64, gain: float = 3.0):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, std=gain / width**0.5)  # a bit too large: tanh saturates without help
        layers += [lin] + ([nn.BatchNorm1d(width)] if norm else []) + [nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


torch.manual_seed(1)
x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
plain, normed = deep(norm=False), deep(norm=True)

# %% [markdown]
# ## Activations without normalisation
# Most tanh outputs sit at ±1: saturated units pass almost no gradient back.

# %%
plots.activations(plain, x)

# %% [markdown]
# ## Activations with BatchNorm
# Before each tanh, BatchNorm subtracts the batch mean and divides by the batch std: far fewer saturate.

# %%
plots.activations(normed, x)

# %% [markdown]
# ## Gradient flow
# One backward pass each, traced with `grads=True`: the RMS gradient of every weight, first layer on the
# left. Without normalisation it decays towards the input; with BatchNorm it stays within one order.

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
