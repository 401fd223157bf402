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
# # 03 · micrograd meets PyTorch
#
# `lens.Value` is micrograd's `Value` (same fields, same operators, same numbers) with `exp`, `log`,
# `tanh` and `sigmoid` added. Goal: compute the lecture's expression and neuron with it, next to
# PyTorch, and see the same gradients; then write tanh out as (e^{2x}-1)/(e^{2x}+1) both ways.

# %%

import autogradlens as lens
from autogradlens import Value
from autogradlens.examples import NEURON, lecture_expression, neuron, neuron_formula

a, b = Value(-4.0), Value(2.0)
c = a + b
d = a * b + b**3
c += c + 1
c += 1 + c + (-a)
d += d * 2 + (b + a).relu()
d += 3 * d + (b - a).relu()
e = c - d
f = e**2
g = f / 2.0
g += 10.0 / f
g.backward()
print(f"lens.Value: g = {g.data:.4f}, dg/da = {a.grad:.4f}, dg/db = {b.grad:.4f}")

tg, tp = lecture_expression()  # the same expression in PyTorch
tg.backward()
print(f"PyTorch:    g = {tg.item():.4f}, dg/da = {tp['a'].grad.item():.4f}, dg/db = {tp['b'].grad.item():.4f}")

# %% [markdown]
# ## The neuron, tanh as one operation

# %%
p = {k: Value(v) for k, v in NEURON.items()}
o = (p["x1"] * p["w1"] + p["x2"] * p["w2"] + p["b"]).tanh()
o.backward()
print("Value:  ", f"o={o.data:.4f}", {k: round(p[k].grad, 4) for k in ("x1", "w1", "x2", "w2")})
to, tp = neuron()
to.backward()
print("PyTorch:", f"o={to.item():.4f}", {k: round(tp[k].grad.item(), 4) for k in ("x1", "w1", "x2", "w2")})

# %% [markdown]
# ## The neuron, tanh written out
# Same function, more nodes: the gradients agree to the last bits or so, because the formula rounds
# differently from a single tanh.

# %%
q = {k: Value(v) for k, v in NEURON.items()}
n = q["x1"] * q["w1"] + q["x2"] * q["w2"] + q["b"]
ex = (2 * n).exp()
o2 = (ex - 1) / (ex + 1)
o2.backward()
fo, fp = neuron_formula()
fo.backward()
for k in ("x1", "w1", "x2", "w2"):
    print(f"{k}: Value tanh {p[k].grad:+.17f}  Value formula {q[k].grad:+.17f}  PyTorch formula "
          f"{fp[k].grad.item():+.17f}")

# %% [markdown]
# PyTorch's graph for the formula, traced, shows every extra node:

# %%
fo2, fp2 = neuron_formula()
print(lens.trace(fo2, params=fp2).to_text(show_saved=False))

# %% [markdown]
# ## The two graphs, drawn
# The Value neuron (the lecture's picture: data and grad on every value) and PyTorch's graph of the formula.

# %%
lens.trace(o)

# %%
lens.trace(fo2, params=fp2)
