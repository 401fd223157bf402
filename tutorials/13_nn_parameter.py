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
# # 13 · What is `nn.Parameter`?
#
# A `Parameter` is a tensor with `requires_grad=True` that a module *registers* when it is assigned as an
# attribute. Goal: see what registration gives (`named_parameters()`, the optimizer, `.to()`, the
# state dict) and what a plain tensor attribute misses, on `named_parameters()` and on the trace's leaves.

# %%
import torch
import torch.nn as nn

import autogradlens as lens


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))  # registered: a parameter of the module
        self.b = torch.zeros(3, requires_grad=True)  # a plain attribute: autograd tracks it, the module does not

    def forward(self, x):
        return x * self.w + self.b


m = Scale()
print("named_parameters():", [n for n, _ in m.named_parameters()])
print("state_dict keys:   ", list(m.state_dict()))
print("isinstance(m.w, Tensor):", isinstance(m.w, torch.Tensor), "| is_leaf:", m.w.is_leaf,
      "| requires_grad:", m.w.requires_grad)

# %% [markdown]
# ## The same object every time
# `parameters()` is a generator, but it yields the very Parameter objects the module holds: the optimizer
# built from it reads the `.grad` that backward writes into them.

# %%
p1, p2 = list(m.parameters()), list(m.parameters())
print(type(m.parameters()).__name__, all(a is b for a, b in zip(p1, p2)), p1[0] is m.w)

# %% [markdown]
# ## What the plain attribute misses
# Both tensors get a gradient (autograd does not care about modules), but an optimizer built from
# `m.parameters()` never updates `b`, and `m.double()` does not convert it.

# %%
x = torch.randn(4, 3)
opt = torch.optim.SGD(m.parameters(), lr=0.5)
(m(x) ** 2).sum().backward()
opt.step()
print("w moved:", not torch.equal(m.w.detach(), torch.ones(3)), "| b moved:", not torch.equal(m.b.detach(),
                                                                                             torch.zeros(3)))
print("b.grad is set all the same:", m.b.grad is not None)
print("after m.double(): w", m.double().w.dtype, "| b", m.b.dtype)

# %% [markdown]
# ## On the trace
# `params=m` names leaves from `named_parameters()`: the registered `w` appears as `param:w` (teal), the
# plain `b` only as an unnamed leaf named by its shape (green), exactly what the module knows.

# %%
m = Scale()
lens.trace((m(torch.randn(4, 3)) ** 2).sum(), params=m)
