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
# # 04 · Mirror an MLP step
#
# `lens.mirror(loss)` re-derives every node's backward with micrograd-style rules and compares with
# PyTorch, node by node (given PyTorch's incoming gradient) and end to end (the mirror's own backward
# to every parameter). Goal: read the table, and see which nodes agree bit for bit and why the
# others differ only in the last bits.

# %%
import torch
import torch.nn.functional as F

import autogradlens as lens
from autogradlens import data
from autogradlens.examples import MLP

d = data.digits()
torch.manual_seed(0)
model = MLP((64, 32, 10)).double()
x, y = d.x_train[:32].double(), d.y_train[:32]
loss = F.cross_entropy(model(x), y)
report = lens.mirror(loss, params=model)
print(report.to_text())

# %% [markdown]
# ## Which are bit-identical, and why the others are not
# * Elementwise rules (ReLU's mask, NLL's -1/N at the target, the transpose) do the same operations in
#   the same order as PyTorch: the bits agree.
# * LogSoftmax's `g - exp(y)·Σg` contains a row sum, and PyTorch's exp is a vectorised kernel: last bits.
# * Matrix products (`Addmm`) and batch sums (the bias gradient, Σ over the batch) are computed by
#   BLAS/vectorised kernels that add in blocks; numpy adds in another order. Float addition is not
#   associative, so the last bits differ: relative differences of about 1e-16.

# %%
for r in report.rows:
    kind = "bit-identical" if r["exact"] else f"differs by {r['max_rel']:.1e} (relative)"
    print(f"{r['name']:22s} {r['type']:22s} {kind}")
print("same gradient as PyTorch for every parameter:", report.ok, "| .grad untouched:",
      all(p.grad is None for p in model.parameters()))

# %% [markdown]
# ## float32
# A float32 model is mirrored in float64. A difference counts as a mismatch only when it is larger than
# the rounding error float32 arithmetic can make on that computation: the bound is computed from the sizes
# of the terms that were summed (column `bound`), in units of float32's epsilon (2**-24).

# %%
model32 = MLP((64, 32, 10))
report32 = lens.mirror(F.cross_entropy(model32(d.x_train[:32]), y), params=model32)
print(repr(report32), "| largest relative difference:", f"{max(r['max_rel'] for r in report32.rows):.1e}")
for r in report32.rows[:4]:
    print(f"{r['name']:22s} differs by {r['max_abs']:.1e}, allowed {r['bound']:.1e}")

# %% [markdown]
# ## mirror can stand in for backward
# With `backward=True` it also runs PyTorch's backward, leaving `.grad` exactly as `loss.backward()` would.

# %%
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    r = lens.mirror(loss, params=model, backward=True)
    opt.step()
    print(f"step {step}: loss {loss.item():.4f}  mirror ok: {r.ok}")

# %% [markdown]
# ## The report in a notebook
# A `MirrorReport` shows itself as its table and the graph coloured by verdict
# (green: agrees with PyTorch, red: does not, grey: no rule).

# %%
report
