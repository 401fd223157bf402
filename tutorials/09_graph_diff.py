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
# # 09 · Diffing two autograd graphs
#
# `lens.diff(a, b)` matches two graphs by structure (never by id) and lists what was removed, added and
# changed. Goal: see how a formula, a mode switch (`train()` vs `eval()`) or an activation swap
# changes what autograd builds and saves.

# %%
import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens
from autogradlens.examples import neuron, neuron_formula

# %% [markdown]
# ## tanh as one op vs tanh written out
# The leaves and the weighted sum match wholesale; tanh becomes a division, and four nodes appear.

# %%
o, p = neuron()
f, q = neuron_formula()
d = lens.diff(lens.trace(o, params=p), lens.trace(f, params=q))
print(d.to_text())

# %% [markdown]
# ## train() vs eval()
# In eval mode Dropout returns its input untouched (its MulBackward0 node disappears) and BatchNorm
# uses the running statistics, so it no longer saves the batch mean and inverse std.

# %%
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3))
x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
train_graph = lens.trace(F.cross_entropy(model.train()(x), y), params=model)
eval_graph = lens.trace(F.cross_entropy(model.eval()(x), y), params=model)
d = lens.diff(train_graph, eval_graph)
print(d.to_text())
print(d.summary())

# %% [markdown]
# ## Side by side
# In a notebook a `GraphDiff` shows itself: both graphs side by side, removed red, added green, changed
# orange. `d.render("diff.html")` writes the same as a self-contained page.

# %%
d
