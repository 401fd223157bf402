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
# # 15 · Gradients of hidden layers: `retain_grad()` and `grads=True`
#
# Backward computes a gradient at every node but keeps only the leaves' (`.grad` of parameters):
# intermediates are freed to save memory. Goal: keep one with `retain_grad()`, and see all of them at
# once with `lens.trace(..., grads=True)`, which leaves every `.grad` as it was.

# %%
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

# %% [markdown]
# ## retain_grad() on a hidden layer
# `watch(retain=[...])` calls `retain_grad()` on a module's output at every forward.

# %%
hidden = {}
h1 = model[1].register_forward_hook(lambda m, i, out: hidden.__setitem__("tanh", out))
h0 = model[0].register_forward_hook(lambda m, i, out: hidden.__setitem__("linear", out))
with lens.watch(model, retain=["1"]) as w:
    F.cross_entropy(model(x), y).backward()
h0.remove()
h1.remove()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # reading .grad of a non-leaf warns: that is the point here
    print("Tanh output .grad:", tuple(hidden["tanh"].grad.shape), "| Linear output .grad:", hidden["linear"].grad)
print([f"{e.name}: |grad|={e.norm:.4f}" for e in w.events if e.kind == "retain"])

# %% [markdown]
# ## Every node's gradient, without touching .grad
# `grads=True` runs one extra backward pass with hooks; each node gets the gradient flowing into it.

# %%
model.zero_grad()
t = lens.trace(F.cross_entropy(model(x), y), params=model, grads=True)
print("model .grad untouched:", all(p.grad is None for p in model.parameters()))
print("gradient into Tanh:", {k: round(v, 4) for k, v in t.graph.nodes["TanhBackward0:0"]["grad"].items()
                              if k != "values"})
t
