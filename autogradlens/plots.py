"""matplotlib pictures of training and of a Watch; every function returns the Figure."""

from __future__ import annotations


def _axes(ax, size=(6.4, 3.6)):
    import matplotlib.pyplot as plt
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    return ax.figure, ax


def _smooth(xs, k: int = 20):
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def training_curves(histories: dict):
    """Loss per step (smoothed) and test accuracy per epoch, every optimizer on the same axes."""
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, h in histories.items():
        a1.plot(_smooth(h.loss), label=name)
        a2.plot(range(1, len(h.test_acc) + 1), h.test_acc, marker="o", ms=3, label=name)
    a1.set(xlabel="step", ylabel="training loss (moving average)", yscale="log", title="loss")
    a2.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    a1.legend()
    a2.legend()
    fig.tight_layout()
    return fig


def _per_param(watch, key: str, ax, title: str, ylabel: str, hline=None):
    fig, ax = _axes(ax)
    names = sorted({n for s in watch.steps for n in s[key]})
    for n in names:
        xs = [s["step"] for s in watch.steps if n in s[key]]
        ys = [s[key][n] for s in watch.steps if n in s[key]]
        ax.plot(xs, ys, label=n, lw=1)
    if hline is not None:
        ax.axhline(hline, color="#999999", ls="--", lw=0.8)
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=title)
    if names:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def grad_norms(watch, ax=None):
    """Per-parameter gradient norm (after AccumulateGrad) at every step."""
    return _per_param(watch, "grad_norm", ax, "gradient norm per parameter", "‖grad‖")


def update_ratios(watch, ax=None):
    """Per-parameter ‖update‖ / ‖parameter‖ at every optimizer step (dashed: the 1e-3 rule of thumb)."""
    return _per_param(watch, "update_ratio", ax, "update / parameter ratio", "‖Δp‖ / ‖p‖", hline=1e-3)


def saved_bytes(watch, ax=None):
    """Bytes autograd saved for backward at every step, stacked by the node type that saved them."""
    fig, ax = _axes(ax)
    types = sorted({t for s in watch.steps for t in s["saved_by_type"]})
    xs = [s["step"] for s in watch.steps]
    ys = [[s["saved_by_type"].get(t, 0) / 1024 for s in watch.steps] for t in types]
    if xs and types:
        ax.stackplot(xs, ys, labels=types, alpha=0.85)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set(xlabel="step", ylabel="KiB saved for backward", title="saved tensors by node type (deduplicated)")
    fig.tight_layout()
    return fig


def step_sizes(watches: dict, ax=None):
    """Effective learning rate per parameter: SGD's is its constant lr; Adam's is lr / (sqrt(v_hat) + eps)
    (median over the elements), which adapts per parameter and over time."""
    fig, ax = _axes(ax)
    styles = ["-", "--", ":", "-."]
    for i, (opt_name, w) in enumerate(watches.items()):
        names = sorted({n for s in w.steps for n in s["effective_lr"]})
        for n in names:
            xs = [s["step"] for s in w.steps if n in s["effective_lr"]]
            ys = [s["effective_lr"][n] for s in w.steps if n in s["effective_lr"]]
            ax.plot(xs, ys, ls=styles[i % len(styles)], lw=1, label=f"{opt_name} {n}")
    ax.set(xlabel="step", ylabel="effective step size", yscale="log",
           title="effective step size: Adam adapts, SGD is constant")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
