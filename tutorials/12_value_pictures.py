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
# # 12 · The lecture's pictures: data and grad on every value
#
# The first half of the micrograd lecture, with `lens.Value`: build an expression, call `backward()`, and
# read `data` and `grad` off every node of the picture (the lecture's `draw_dot`). Goal: see that
# `grad` is the derivative of the output with respect to that value, and that `+` passes it on unchanged
# while `*` swaps the factors.

# %%
import autogradlens as lens
from autogradlens import Value
from autogradlens.demo import lecture_neuron

# %% [markdown]
# ## An expression
# L = (a·b + c)·f with a = 2, b = -3, c = 10, f = -2. Each value is a record `name | data | grad`; the small
# round nodes are the operations that made them. Before `backward()` every grad is 0.

# %%
a, b, c, f = Value(2.0), Value(-3.0), Value(10.0), Value(-2.0)
e = a * b
d = e + c
L = d * f
lens.trace(L)

# %% [markdown]
# After `L.backward()`: dL/dL = 1; dL/dd = f = -2 and dL/df = d = 4 (a product swaps its factors);
# `+` hands dL/dd unchanged to e and c; then dL/da = dL/de · b = -2 · -3 = 6.

# %%
L.backward()
print(f"a.grad={a.grad} b.grad={b.grad} c.grad={c.grad} f.grad={f.grad}")
lens.trace(L)

# %% [markdown]
# ## The neuron
# o = tanh(x1·w1 + x2·w2 + b), the lecture's numbers (b = 6.8813… makes o = 0.7071). tanh's local
# derivative is 1 - o² = 0.5, so n.grad = 0.5; w2.grad = 0 because x2 = 0: this input cannot change o.

# %%
o = lecture_neuron()
t = lens.trace(o)
print(t.to_text())
t
