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
# # 06 · What backward keeps: saved tensors and memory
#
# Goal: see which tensors autograd keeps between forward and backward, why, how many bytes that is, how
# it grows with the batch size, and what `backward()` and `retain_graph=True` do to it.

# %%
import torch
import torch.nn.functional as F

import autogradlens as lens
from autogradlens.examples import MLP

torch.manual_seed(0)
model = MLP((64, 128, 10))
x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))

with lens.watch(model) as w:
    loss = F.cross_entropy(model(x), y)
    loss.backward()
for e in w.events:
    if e.kind == "pack":
        print(f"saved by {e.node:20s} as {e.slot:12s} {str(e.shape):10s} {e.nbytes:7,d} bytes  storage {e.storage}")
step = w.steps[0]
print(f"{step['saved_tensors']} tensors, {step['saved_bytes']:,} bytes once shared storages are counted once")
print("by node type:", step["saved_by_type"])

# %% [markdown]
# Why each one: a Linear's backward needs its input to compute dW = Gᵀ·x (`mat1`) and the weight to
# compute dx (`mat2`, a transposed *view* of the weight: no copy); ReLU keeps its output for the mask.
# `watch` records what the model's forward saves; the loss, computed outside the model, saves a little more
# (log-softmax keeps its output, NLL the log-probabilities it picked from and the targets): `lens.trace` of
# the loss shows every saved tensor of the graph.
#
# ## It grows with the batch size

# %%
for batch in (16, 64, 256, 1024):
    t = lens.trace(F.cross_entropy(model(torch.randn(batch, 64)), torch.randint(0, 10, (batch,))), params=model)
    print(f"batch {batch:5d}: {t.summary()['saved_bytes']:>10,d} bytes saved for backward")

# %% [markdown]
# Almost all of it is activations (batch × width); the weights are saved as views and cost nothing
# extra, so memory for backward grows linearly with the batch.
#
# ## backward() frees it; retain_graph keeps it

# %%
loss = F.cross_entropy(model(x), y)
loss.backward(retain_graph=True)
print("after backward(retain_graph=True):", sorted({s["state"] for _, d in lens.trace(loss).graph.nodes(data=True)
                                                   for s in d["saved"]}))
loss.backward()
print("after a plain backward():        ", sorted({s["state"] for _, d in lens.trace(loss).graph.nodes(data=True)
                                                   for s in d["saved"]}))
try:
    loss.backward()
except RuntimeError as err:
    print("a third backward fails:", str(err).split(".")[0])

# %% [markdown]
# ## The picture
# Each pink note is one storage, drawn once however many nodes saved it; the dashed lines carry the slot
# names. After `backward()` the notes turn grey: the memory was freed.

# %%
lens.trace(F.cross_entropy(model(x), y), params=model)
