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
# # 02 · An MLP's graph
#
# An MLP on a digits-shaped batch (64 pixels, 10 classes). Goal: recognise the nodes a Linear layer
# and cross-entropy make, what each saves, how many bytes that is, and what backward frees.

# %%
import torch
import torch.nn.functional as F

import autogradlens as lens
from autogradlens.examples import MLP

torch.manual_seed(0)
model = MLP((64, 32, 10))
x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
loss = F.cross_entropy(model(x), y)
t = lens.trace(loss, params=model)
print(t.to_text())
print(t.summary()["by_type"])

# %% [markdown]
# * `AddmmBackward0` is `bias + x @ W.t()`; `TBackward0` is the transpose `W.t()` on the way to the weight.
# * `ReluBackward0` saves its **result** (the mask is `result > 0`).
# * `cross_entropy` is `LogSoftmaxBackward0` then `NllLossBackward0`.
#
# ## Saved tensors and their bytes

# %%
for node, d in t.graph.nodes(data=True):
    for s in d["saved"]:
        print(f"{node:22s} {s['name']:13s} {str(s['shape']):9s} {s['nbytes']:6d} B  storage={s['storage']} "
              f"alias={s['alias']}")
s = t.summary()
naive = sum(x["nbytes"] for _, d in t.graph.nodes(data=True) for x in d["saved"])
print(f"{s['saved_tensors']} slots, {naive} bytes counted naively, {s['saved_bytes']} bytes in "
      f"{s['saved_storages']} distinct storages")

# %% [markdown]
# ReLU's result and the next Linear's `mat1` share one storage, and `mat2` is a view of the weight
# itself, so the real cost is smaller than the naive sum. The first Linear saves no `mat2`: its input
# `x` needs no gradient, so nothing needs the weight there.

# %%
print(t.graph.nodes["AddmmBackward0:1"]["not_saved"])

# %% [markdown]
# ## Before vs after `backward()`
# Backward frees what was saved (unless `retain_graph=True`). The structure stays readable.

# %%
loss.backward()
after = lens.trace(loss, params=model)
print("states:", sorted({x["state"] for _, d in after.graph.nodes(data=True) for x in d["saved"]}),
      "| saved bytes still held:", after.summary()["saved_bytes"])

# %% [markdown]
# ## The picture, with the gradient at every node
# `grads=True` runs one extra backward pass and records the gradient flowing into each node (its norm,
# or its value for a scalar); `.grad` is left as it was. Colour: log of the gradient's norm.

# %%
model.zero_grad()
lens.trace(F.cross_entropy(model(x), y), params=model, grads=True)
