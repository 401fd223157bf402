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
# # 10 · Becoming a backprop ninja, checked by the lens
#
# In makemore part 4, Karpathy writes the backward pass of a 2-layer MLP with batch norm by hand, one
# intermediate at a time (`dlogprobs`, `dprobs`, ..., `dC`), and checks each against PyTorch with `cmp`.
# `lens.mirror` does the same check for every node of the real graph. Goal: name the intermediates as the
# lecture does, and read the mirror's table as the notebook's `cmp` table.

# %%
import autogradlens as lens
from autogradlens.examples import makemore

loss, names = makemore(batch=32)  # the lecture's network, op by op, on random characters (offline)
print(f"loss {loss.item():.4f}; named tensors: {', '.join(names)}")

# %% [markdown]
# ## The `cmp` table
# `params=names` names the parameters *and* the intermediate tensors. The node that produced a named
# tensor carries its name, and its row shows the gradient of the loss with respect to that tensor (end to
# end: the mirror's own backward from the loss, against PyTorch's), as `cmp('hprebn', dhprebn, hprebn)` does.

# %%
report = lens.mirror(loss, params=names)
rows = {r["name"]: r for r in report.rows}
print(f"{'name':15s} | exact | approximate | maxdiff")
for name in ["logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes",
             "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw", "bnvar_inv", "bnvar",
             "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "W1", "b1", "emb", "C"]:
    r = rows[name]
    exact = r["e2e_exact"] if r["kind"] == "node" else r["exact"]
    maxdiff = r["e2e_max_abs"] if r["kind"] == "node" else r["max_abs"]
    print(f"{name:15s} | {str(bool(exact)):5s} | {r['e2e_status'] == 'match'!s:11s} | {maxdiff:.1e}")

# %% [markdown]
# ## Exact, approximate, and what "approximate" means here
# The network is float32; the mirror computes in float64 and rounds to float32 to compare. Elementwise
# steps like `dlogprobs` agree bit for bit; sums and matrix products (`dcounts_sum`, `dh`, `dW2`) add in
# another order than PyTorch's kernels, so the last bits differ. "approximate" is not a guessed tolerance:
# the difference must stay within a bound on the rounding error, computed from the size of the terms
# that were summed (for `dhprebn`, the batch-norm backward's terms), carried from the loss to each tensor.

# %%
for name in ["logprobs", "counts_sum", "hprebn", "W1"]:
    r = rows[name]
    diff, bound = (r["e2e_max_abs"], r["e2e_bound"]) if r["kind"] == "node" else (r["max_abs"], r["bound"])
    print(f"d{name:12s} differs by {diff:.1e}, allowed {bound:.1e}")
print("every gradient agrees:", report.ok, "| .grad untouched:", all(names[p].grad is None for p in ["C", "W1", "W2"]))

# %% [markdown]
# ## The picture
# The graph, coloured by verdict (green: match). Named nodes show the lecture's names.

# %%
report
