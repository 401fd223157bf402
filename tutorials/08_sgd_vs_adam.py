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
# # 08 · SGD vs Adam on the same MLP
#
# Goal: train the same digits MLP with the two update rules and read, from real hook logs, what Adam
# does differently: per-parameter step sizes from running averages of the gradient and its square.
#
# SGD: p ← p − lr·g.  Adam: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², p ← p − lr·m̂ / (√v̂ + ε).

# %%
import torch

from autogradlens import data, plots, training
from autogradlens.examples import MLP

d = data.digits()
epochs = 2
runs = {}
for name in ("sgd", "adam"):
    torch.manual_seed(0)
    runs[name] = training.fit(MLP((64, 64, 10)), d, name, epochs=epochs, watch=True, progress=False)
    h = runs[name]
    print(f"{h.optimizer:4s} lr={training.DEFAULT_LR[name]:<6g} test accuracy {h.final_test_acc:.3f} "
          f"after {len(h.loss)} steps ({h.seconds:.1f} s)")

# %% [markdown]
# ## Step sizes
# SGD's effective step size is its learning rate. Adam's differs per parameter and over time.

# %%
for name, h in runs.items():  # step sizes are sampled (detailed steps: every 20th by default): the last one taken
    first, last = h.watch.steps[0], [s for s in h.watch.steps if s["detailed"]][-1]
    print(name, {k: f"{first['effective_lr'][k]:.3g} -> {last['effective_lr'][k]:.3g}" for k in first["effective_lr"]})

# %% [markdown]
# ## Adam's state
# `exp_avg` (m) and `exp_avg_sq` (v) live in `optimizer.state[p]`; watch logs their norms on its detailed steps,
# the first 20 and then every 20th (reading them every step would slow Adam by a third; `lens.watch(...,
# sample=1)` takes them every step).

# %%
ups = [e for e in runs["adam"].watch.events if e.kind == "update" and e.param == "net.2.weight"]
for e in ups[:: max(1, len(ups) // 5)]:
    print(f"step {e.adam_step:4d}: |m|={e.exp_avg_norm:.4f} |v|={e.exp_avg_sq_norm:.2e} "
          f"update/param={e.ratio:.2e}")

# %% [markdown]
# ## Pictures
# The loss of both runs (faint: every step; line: moving average) and the test accuracy per epoch.

# %%
plots.training_curves(runs)

# %% [markdown]
# Adam's effective step size per parameter (dashed) against SGD's constant one (solid).

# %%
plots.step_sizes({h.optimizer: h.watch for h in runs.values()})

# %% [markdown]
# How fast each layer changes, ‖update‖ / ‖parameter‖, SGD and Adam side by side on one scale.

# %%
plots.update_ratios({h.optimizer: h.watch for h in runs.values()})
