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
# # 11 · Scalar mode: the lecture's engine re-derives a real network, one number at a time
#
# `lens.mirror` re-derives PyTorch's backward pass node by node. In `mode="tensor"` each gradient is a
# float64 array. In `mode="scalar"` every element of every gradient is a `lens.Value`, micrograd's
# scalar, and every multiply and add of the backward pass is one `Value` node with its `_prev` and `_op`:
# the micrograd algorithm, literally, on Karpathy's makemore part 4 network ("becoming a backprop
# ninja": embedding, a hidden layer with batch norm, tanh, cross-entropy written out op by op).
#
# One idea: the two modes are two independent derivations of the same gradients, and they must reach
# the same verdicts.

# %%
import time

import autogradlens as lens
from autogradlens.examples import makemore

BATCH = 4  # small, so this runs in a second or two; benchmarks/bench_scalar.py runs the lecture's 32

reports, seconds = {}, {}
for mode in ("tensor", "scalar"):
    loss, names = makemore(batch=BATCH)  # the same network and data each time (seeded)
    t0 = time.perf_counter()
    reports[mode] = lens.mirror(loss, params=names, mode=mode)
    seconds[mode] = time.perf_counter() - t0
    print(f"{mode:6s} mode: {reports[mode]!r} in {seconds[mode]:.2f} s")

# %% [markdown]
# ## The two tables side by side
#
# One row per node of PyTorch's graph (named with the lecture's names where the network gives them:
# `logprobs`, `probs`, `counts_sum_inv`, ..., `hprebn`, `emb`) and one per parameter (the end-to-end
# gradient: the mirror's own backward from the loss to `C`, `W1`, ..., `b2`).

# %%
t, s = reports["tensor"], reports["scalar"]
w = max(len(r["name"]) for r in t.rows)
print(f"{'name':{w}s} | tensor mode          | scalar mode")
for a, b in zip(t.rows, s.rows):
    print(f"{a['name']:{w}s} | {a['status']:8s} {a['max_abs']:.1e} | {b['status']:8s} {b['max_abs']:.1e}")
same = [(a["name"], a["status"]) for a in t.rows] == [(b["name"], b["status"]) for b in s.rows]
print(f"\nsame verdict on all {len(t.rows)} rows: {same}; tensor ok: {t.ok}, scalar ok: {s.ok}")

# %% [markdown]
# ## What scalar mode proves
#
# In scalar mode nothing is computed on arrays: each of the numbers flowing backward through this network
# was built by `Value.__mul__` and `Value.__add__`, the two dozen lines of micrograd, from the numbers
# PyTorch saved in the forward pass. About 117,000 Values at batch 4, about a million at the lecture's
# batch 32 (under 10 s: the mirror pauses the garbage collector while it builds them). Every one of those
# scalar operations, re-derived by the micrograd algorithm, lands within rounding of PyTorch's own
# gradient: the same `ok`, row by row, as the float64 arrays of tensor mode. The gradients PyTorch computes
# with its fused C++ kernels are the ones the lecture's scalar engine gets by the chain rule alone.
#
# In a notebook the scalar report shows itself as a table, coloured by verdict:

# %%
s
