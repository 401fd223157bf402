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
# # 10 · Becoming a backprop ninja, graded line by line
#
# In makemore part 4, Karpathy writes the backward pass of a 2-layer MLP with batch norm by hand, one
# intermediate at a time (`dlogprobs`, `dprobs`, ..., `dC`), and compares each with PyTorch through
# `cmp(name, dt, t)`. `cmp` says *whether* a line agrees; `lens.check` also finds the **first wrong line** and
# says **why**. Goal: hand in the exercise with a typical bug, let the lens point at it, fix it.

# %%
import torch
import torch.nn.functional as F

import autogradlens as lens

# the lecture's network, op by op; random characters stand in for names.txt (offline)
g = torch.Generator().manual_seed(2147483647)
vocab_size, block_size, n_embd, n_hidden, n = 27, 3, 10, 64, 32
C = torch.randn((vocab_size, n_embd), generator=g)
W1 = torch.randn((n_embd * block_size, n_hidden), generator=g) * (5 / 3) / ((n_embd * block_size) ** 0.5)
b1 = torch.randn(n_hidden, generator=g) * 0.1
W2 = torch.randn((n_hidden, vocab_size), generator=g) * 0.1
b2 = torch.randn(vocab_size, generator=g) * 0.1
bngain = torch.randn((1, n_hidden), generator=g) * 0.1 + 1.0
bnbias = torch.randn((1, n_hidden), generator=g) * 0.1
parameters = [C, W1, b1, W2, b2, bngain, bnbias]
for p in parameters:
    p.requires_grad = True
del p
Xb = torch.randint(0, vocab_size, (n, block_size), generator=g)
Yb = torch.randint(0, vocab_size, (n,), generator=g)

emb = C[Xb]
embcat = emb.view(emb.shape[0], -1)
hprebn = embcat @ W1 + b1
bnmeani = 1 / n * hprebn.sum(0, keepdim=True)
bndiff = hprebn - bnmeani
bndiff2 = bndiff**2
bnvar = 1 / (n - 1) * (bndiff2).sum(0, keepdim=True)
bnvar_inv = (bnvar + 1e-5) ** -0.5
bnraw = bndiff * bnvar_inv
hpreact = bngain * bnraw + bnbias
h = torch.tanh(hpreact)
logits = h @ W2 + b2
logit_maxes = logits.max(1, keepdim=True).values
norm_logits = logits - logit_maxes
counts = norm_logits.exp()
counts_sum = counts.sum(1, keepdims=True)
counts_sum_inv = counts_sum**-1
probs = counts * counts_sum_inv
logprobs = probs.log()
loss = -logprobs[range(n), Yb].mean()

names = {k: v for k, v in dict(globals()).items() if isinstance(v, torch.Tensor) and v.requires_grad}
for t in names.values():
    if not t.is_leaf:
        t.retain_grad()
loss.backward()  # the lecture's order: PyTorch's gradients first, in .grad
print(f"loss {loss.item():.4f}; {len(names)} named tensors")


# %% [markdown]
# ## Exercise 1, handed in with a bug
# The lines below are the lecture's solution, except one: `counts` is used twice in the forward pass
# (`counts_sum = counts.sum(...)` and `probs = counts * counts_sum_inv`), and this learner forgot the second
# path, the `dcounts += ...` line. A detached copy of each tensor keeps the arithmetic out of autograd.

# %%
def exercise_1(with_the_bug):
    d = {}
    dlogprobs = torch.zeros_like(logprobs)
    dlogprobs[range(n), Yb] = -1.0 / n
    dprobs = (1.0 / probs) * dlogprobs
    dcounts_sum_inv = (counts * dprobs).sum(1, keepdim=True)
    dcounts = counts_sum_inv * dprobs
    dcounts_sum = (-counts_sum**-2) * dcounts_sum_inv
    if not with_the_bug:
        dcounts += torch.ones_like(counts) * dcounts_sum
    dnorm_logits = counts * dcounts
    dlogits = dnorm_logits.clone()
    dlogit_maxes = (-dnorm_logits).sum(1, keepdim=True)
    dlogits += F.one_hot(logits.max(1).indices, num_classes=logits.shape[1]) * dlogit_maxes
    dh = dlogits @ W2.T
    dW2 = h.T @ dlogits
    db2 = dlogits.sum(0)
    dhpreact = (1.0 - h**2) * dh
    dbngain = (bnraw * dhpreact).sum(0, keepdim=True)
    dbnraw = bngain * dhpreact
    dbnbias = dhpreact.sum(0, keepdim=True)
    dbndiff = bnvar_inv * dbnraw
    dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)
    dbnvar = (-0.5 * (bnvar + 1e-5) ** -1.5) * dbnvar_inv
    dbndiff2 = (1.0 / (n - 1)) * torch.ones_like(bndiff2) * dbnvar
    dbndiff += (2 * bndiff) * dbndiff2
    dhprebn = dbndiff.clone()
    dbnmeani = (-dbndiff).sum(0)
    dhprebn += 1.0 / n * (torch.ones_like(hprebn) * dbnmeani)
    dembcat = dhprebn @ W1.T
    dW1 = embcat.T @ dhprebn
    db1 = dhprebn.sum(0)
    demb = dembcat.view(emb.shape)
    dC = torch.zeros_like(C)
    for k in range(Xb.shape[0]):
        for j in range(Xb.shape[1]):
            dC[Xb[k, j]] += demb[k, j]
    for name, value in locals().items():
        if name.startswith("d") and name[1:] in names:
            d[name[1:]] = value.detach()
    return d


with torch.no_grad():
    grads = exercise_1(with_the_bug=True)
report = lens.check(loss, grads, params=names)
print(report.to_text())

# %% [markdown]
# ## Reading the verdict
# * `exact` is the lecture's `cmp`: bitwise equal to PyTorch's `.grad`.
# * `approximate` is within a bound on the rounding error of computing that line (the sizes of the terms it
#   sums, the roundings on the way; the same bound the mirror uses), not a guessed tolerance.
# * `status`: `right`; `wrong` (this line is wrong: every gradient it was computed from is right);
#   `inherits` (this line is right, it was given a wrong gradient); `unknown` (after `backward()` freed the
#   graph, some lines cannot be judged on their own: the hint says how to know more).
#
# The first wrong line, its diagnosis and its hint:

# %%
row = next(r for r in report.rows if r["name"] == report.first_wrong)
print(report.first_wrong, "|", row["diagnosis"], "|", row["hint"])

# %% [markdown]
# The graph, with the lecture's names, coloured by status; the first wrong line is outlined.

# %%
report

# %% [markdown]
# ## The fix
# Add the missing path, `dcounts += torch.ones_like(counts) * dcounts_sum`, and hand it in again.

# %%
with torch.no_grad():
    grads = exercise_1(with_the_bug=False)
W1_grad = W1.grad.clone()
fixed = lens.check(loss, grads, params=names)
print(repr(fixed))
print("lines bit for bit equal to PyTorch's:", sum(r["exact"] for r in fixed.rows), "of", len(fixed.rows))
print("largest difference of the others:", max(r["maxdiff"] for r in fixed.rows), "(rounding: the sums add in "
      "another order than PyTorch's kernels)")
print(".grad untouched:", torch.equal(W1.grad, W1_grad))

# %% [markdown]
# ## The micrograd lecture's gradients, set by hand
# Before writing `backward()`, the micrograd lecture fills in every `.grad` of `L = (a*b + c) * f` by hand.
# `lens.check(L)` compares each with the true gradient (computed from the ops, not from your `_backward`).
# Here `a.grad` is only the local derivative `b.data`, without the chain rule's `e.grad`:

# %%
a, b, c, f = (lens.Value(x, label=k) for x, k in ((2.0, "a"), (-3.0, "b"), (10.0, "c"), (-2.0, "f")))
e = a * b
e.label = "e"
d = e + c
d.label = "d"
L = d * f
L.label = "L"
L.grad, f.grad, d.grad, c.grad, e.grad = 1.0, 4.0, -2.0, -2.0, -2.0
a.grad, b.grad = b.data, -4.0  # a.grad forgets e.grad
by_hand = lens.check(L)
print(by_hand.to_text())

# %%
by_hand
