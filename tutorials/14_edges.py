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
# # 14 · What is an edge? `(node, input_nr)`
#
# Each entry of `grad_fn.next_functions` is a pair `(node, input_nr)`: the node that made an input, and
# *which of its outputs* the input is. For most ops `input_nr` is 0 because they have one output. Goal:
# see a multi-output op (`split`, `unbind`) where it is not, and how the trace draws it.

# %%
import torch

import autogradlens as lens

x = torch.randn(4, 3, requires_grad=True)
top, bottom = x.split(2)  # one SplitBackward0 node, two outputs
y = (bottom * 2 + top).sum()
print([(type(f).__name__, nr) for f, nr in (bottom * 2).grad_fn.next_functions])
print("top.output_nr =", top.output_nr, "| bottom.output_nr =", bottom.output_nr)

# %% [markdown]
# `bottom` is output 1 of the split, `top` output 0; both come from the same node object:

# %%
add = y.grad_fn.next_functions[0][0]
(mul, nr_mul), (split_node, nr_top) = add.next_functions
print(type(mul).__name__, "->", [(type(f).__name__, nr) for f, nr in mul.next_functions])
print("the same split node:", mul.next_functions[0][0] is split_node, "| input_nr:", nr_top)

# %% [markdown]
# ## In the trace
# The edge attributes carry it: `input_nr` (which output of the producer) and `slot` (position in the
# consumer's `next_functions`). In the picture, an edge into a multi-output node is labelled `:0`/`:1`.

# %%
t = lens.trace(y, params={"x": x})
for u, v, k, e in t.graph.edges(keys=True, data=True):
    print(f"{u:16s} -> {v:16s} slot={e['slot']} input_nr={e['input_nr']}")
t

# %% [markdown]
# Backward routes each gradient to the right output: the split's backward gets one gradient per output
# (1 for `top`, 2 for `bottom`) and stacks them back into x's shape.

# %%
y.backward()
print(x.grad)
