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
# # 05 · Backprop by hand, checked by the mirror
#
# In the spirit of the makemore "become a backprop ninja" exercise: derive the gradients of
# cross-entropy and of batch normalisation on paper, write them as a few tensor lines, and check them
# against the mirror (which itself agrees with PyTorch).

# %%
import torch
import torch.nn.functional as F

import autogradlens as lens

torch.manual_seed(0)
N, C = 8, 5
logits = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
target = torch.randint(0, C, (N,))
loss = F.cross_entropy(logits, target)
report = lens.mirror(loss, params={"logits": logits})

# %% [markdown]
# ## Cross-entropy
# loss = mean_i( -log softmax(logits_i)[t_i] ). Differentiating: dloss/dlogits = (softmax(logits) - onehot(t)) / N.

# %%
p = torch.softmax(logits.detach(), dim=1)
dlogits = (p - F.one_hot(target, C)) / N
mine = torch.from_numpy(report.grads["logits"])
print("hand vs mirror: max |diff| =", (dlogits - mine).abs().max().item())
print("mirror vs PyTorch:", report.ok)

# %% [markdown]
# ## Batch normalisation
# y = gamma * xhat + beta, xhat = (x - mean) * invstd, with the batch mean and biased variance.
# The result of the derivation: dx = gamma * invstd / N * (N*dy - sum(dy) - xhat * sum(dy * xhat)).

# %%
x = torch.randn(N, 3, dtype=torch.float64, requires_grad=True)
gamma = torch.rand(3, dtype=torch.float64, requires_grad=True)
beta = torch.randn(3, dtype=torch.float64, requires_grad=True)
dy = torch.randn(N, 3, dtype=torch.float64)
out = (F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5) * dy).sum()
report = lens.mirror(out, params={"x": x, "gamma": gamma, "beta": beta})

xd = x.detach()
mean, var = xd.mean(0), xd.var(0, unbiased=False)
invstd = 1 / torch.sqrt(var + 1e-5)
xhat = (xd - mean) * invstd
hand = {"x": gamma.detach() * invstd / N * (N * dy - dy.sum(0) - xhat * (dy * xhat).sum(0)),
        "gamma": (dy * xhat).sum(0), "beta": dy.sum(0)}
for k, v in hand.items():
    print(f"d{k:5s} hand vs mirror: max |diff| = {(v - torch.from_numpy(report.grads[k])).abs().max().item():.1e}")
print(report.to_text())

# %% [markdown]
# ## The graph behind batch norm
# `F.batch_norm` is a single node, `NativeBatchNormBackward0`: PyTorch does what we derived by hand in one
# fused kernel. It saves the input, the weight and the batch statistics (mean and 1/std).

# %%
lens.trace(out, params={"x": x, "gamma": gamma, "beta": beta})
