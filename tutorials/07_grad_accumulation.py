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
# # 07 · `.grad` accumulates
#
# Goal: see that backward *adds* into `.grad` (that is what `AccumulateGrad` does), and what happens in
# a training loop that forgets `zero_grad()`.

# %%
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens
from autogradlens import plots

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

# %% [markdown]
# ## Two backward passes add up

# %%
loss = F.cross_entropy(model(x), y)
loss.backward(retain_graph=True)
g1 = model[0].bias.grad.clone()
loss.backward()
print("after two backward passes, grad / first grad =", (model[0].bias.grad / g1).unique().tolist())
model.zero_grad()
print("after zero_grad(), .grad is", model[0].bias.grad)

# %% [markdown]
# ## Forgetting zero_grad() in a training loop
# `watch` sees every AccumulateGrad: `accumulated=True` means backward added onto an existing `.grad`.
# Across optimizer steps that is almost always a bug, and watch says so.


# %%
def train(zero_grad: bool, steps: int = 12):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lens.watch(m, optimizer=opt) as w:
            for _ in range(steps):
                if zero_grad:
                    opt.zero_grad()
                F.cross_entropy(m(x), y).backward()
                opt.step()
    return w, caught


good, _ = train(zero_grad=True)
bad, caught = train(zero_grad=False)
for name, w in (("with zero_grad()", good), ("without", bad)):
    print(name)
    for e in w.events:
        if e.kind == "accumulate" and e.param == "0.bias" and e.step < 4:
            print(f"  step {e.step}: accumulated={e.accumulated}  |grad|={e.norm:.4f}")
print("warning:", caught[0].message if caught else None)

# %% [markdown]
# ## The picture
# Without `zero_grad()` every step adds the new gradient onto all the old ones: the norms climb step after
# step instead of following the loss down.

# %%
plots.grad_norms({"with zero_grad()": good, "without zero_grad()": bad})
