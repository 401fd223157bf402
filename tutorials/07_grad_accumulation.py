# %% [markdown]
# # 07 · `.grad` accumulates
#
# Goal: see that backward *adds* into `.grad` (AccumulateGrad), what happens when `zero_grad()` is
# forgotten, how `retain_grad()` keeps the gradient of a hidden layer, and that `model.parameters()`
# hands out the very same Parameter objects every time.

# %%
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
opt = torch.optim.SGD(model.parameters(), lr=0.1)

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
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with lens.watch(model, optimizer=opt) as w:
        for step in range(3):
            loss = F.cross_entropy(model(x), y)  # no opt.zero_grad() here!
            loss.backward()
            opt.step()
for e in w.events:
    if e.kind == "accumulate" and e.param == "0.bias":
        print(f"step {e.step}: accumulated={e.accumulated}  |grad|={e.norm:.4f}")
print("warning:", caught[0].message if caught else None)
opt.zero_grad()

# %% [markdown]
# ## retain_grad() on a hidden layer
# Intermediate tensors do not keep `.grad` (PyTorch frees them to save memory). `retain=[...]` asks
# watch to call `retain_grad()` on a module's output every forward.

# %%
hidden = {}
model[1].register_forward_hook(lambda m, i, out: hidden.__setitem__("tanh", out))
model[0].register_forward_hook(lambda m, i, out: hidden.__setitem__("linear", out))
with lens.watch(model, retain=["1"]) as w:
    F.cross_entropy(model(x), y).backward()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    print("Tanh output .grad shape:", tuple(hidden["tanh"].grad.shape), "| Linear output .grad:", hidden["linear"].grad)
print([f"{e.name}: |grad|={e.norm:.4f}" for e in w.events if e.kind == "retain"])

# %% [markdown]
# ## parameters() is a generator of the same objects
# Each call makes a new generator, but it yields the same Parameter objects, whose `.grad` the
# optimizer reads. That is why `torch.optim.SGD(model.parameters())` sees the gradients backward writes.

# %%
a, b = list(model.parameters()), list(model.parameters())
print(type(model.parameters()).__name__, all(p is q for p, q in zip(a, b)), a[0] is model[0].weight)
