"""matplotlib pictures of training, of a Watch and of gradients; every function returns the Figure.

Figures are made without pyplot (the user's backend is left alone) and show themselves in a notebook.
Curves that jump from step to step are drawn raw and faint, with a moving average on top.
"""

from __future__ import annotations

import io
import math

from .errors import LensTypeError, LensValueError

_FIG = None


def _figure_class():
    global _FIG
    if _FIG is None:
        from matplotlib.figure import Figure

        class LensFigure(Figure):
            """A matplotlib Figure that shows itself as a PNG in a notebook."""

            def _repr_png_(self):
                buf = io.BytesIO()
                self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
                return buf.getvalue()

        _FIG = LensFigure
    return _FIG


def figure(size=(6.4, 3.6), ncols: int = 1, nrows: int = 1):
    """A new Figure and its axes (a list when there are several), made without pyplot."""
    fig = _figure_class()(figsize=size)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes[0] if len(axes) == 1 else axes


def _axes(ax, size=(6.4, 3.6)):
    if ax is None:
        return figure(size)
    return ax.figure, ax


def _colors(n: int) -> list:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _smooth(xs, k: int = 20):
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _curve(ax, xs, ys, color, label, k: int = 20):
    """Raw values faint, their moving average on top, one colour."""
    ax.plot(xs, ys, color=color, alpha=0.25, lw=0.7)
    ax.plot(xs, _smooth(list(ys), k) if len(ys) > k else ys, color=color, lw=1.4, label=label)


def training_curves(histories: dict):
    """Loss per step (raw faint, moving average on top) and test accuracy per epoch, one colour per optimizer."""
    fig, (a1, a2) = figure((10, 3.6), ncols=2)
    for (name, h), c in zip(histories.items(), _colors(len(histories))):
        label = getattr(h, "optimizer", name)
        _curve(a1, range(len(h.loss)), h.loss, c, label)
        a2.plot(range(1, len(h.test_acc) + 1), h.test_acc, marker="o", ms=3, color=c, label=label)
    a1.set(xlabel="step", ylabel="training loss", yscale="log", title="loss (faint: every step; line: average)")
    a2.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    a1.legend()
    a2.legend()
    fig.tight_layout()
    return fig


def _watches(watch) -> dict:
    if isinstance(watch, dict):
        return watch
    return {"": watch}


def _per_param(watch, key: str, ax, title: str, ylabel: str, hline=None):
    """One panel per watch (``{"SGD": w1, "Adam": w2}`` puts them side by side, titled by optimizer)."""
    ws = _watches(watch)
    if ax is not None and len(ws) > 1:
        raise LensValueError("pass one Watch when giving ax=, or a dict of watches without ax")
    if ax is None:
        fig, axes = figure((6.4 * len(ws), 3.6), ncols=len(ws))
        axes = axes if isinstance(axes, list) else [axes]
    else:
        fig, axes = ax.figure, [ax]
    for a, (opt, w) in zip(axes, ws.items()):
        names = sorted({n for s in w.steps for n in s[key]})
        for n, c in zip(names, _colors(len(names))):
            xs = [s["step"] for s in w.steps if n in s[key]]
            ys = [s[key][n] for s in w.steps if n in s[key]]
            _curve(a, xs, ys, c, n)
        if hline is not None:
            a.axhline(hline, color="#999999", ls="--", lw=0.8)
        a.set(xlabel="step", ylabel=ylabel, yscale="log", title=f"{opt}: {title}" if opt else title)
        if names:
            a.legend(fontsize=7, ncol=2)
    if len(axes) > 1:  # the same scale side by side, so the optimizers compare at a glance
        lo = min(a.get_ylim()[0] for a in axes)
        hi = max(a.get_ylim()[1] for a in axes)
        for a in axes:
            a.set_ylim(lo, hi)
    fig.tight_layout()
    return fig


def grad_norms(watch, ax=None):
    """Per-parameter gradient norm (after AccumulateGrad) at each detailed step (``lens.watch(sample=1)``: every
    step); a dict ``{"SGD": w, "Adam": w2}`` draws one panel per optimizer, side by side."""
    return _per_param(watch, "grad_norm", ax, "gradient norm per parameter", "‖grad‖")


def update_ratios(watch, ax=None):
    """Per-parameter ‖update‖ / ‖parameter‖ at each detailed optimizer step (dashed: the 1e-3 rule of thumb);
    a dict of watches draws one panel per optimizer."""
    return _per_param(watch, "update_ratio", ax, "update / parameter ratio", "‖Δp‖ / ‖p‖", hline=1e-3)


def saved_bytes(watch, ax=None):
    """Bytes autograd saved for backward at each detailed step, stacked by the node type that saved them."""
    fig, ax = _axes(ax)
    steps = [s for s in watch.steps if s["detailed"]]  # the others were not measured
    types = sorted({t for s in steps for t in s["saved_by_type"]})
    xs = [s["step"] for s in steps]
    ys = [[s["saved_by_type"].get(t, 0) / 1024 for s in steps] for t in types]
    if xs and types:
        ax.stackplot(xs, ys, labels=types, alpha=0.85, colors=_colors(len(types)))
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.set(xlabel="step", ylabel="KiB saved for backward", title="saved tensors by node type (deduplicated)")
    fig.tight_layout()
    return fig


def step_sizes(watches: dict, ax=None):
    """Effective learning rate per parameter: SGD's is its constant lr; Adam's is lr / (sqrt(v_hat) + eps)
    (median over the elements), which adapts per parameter and over time."""
    fig, ax = _axes(ax, (7.5, 4))
    styles = ["-", "--", ":", "-."]
    names = sorted({n for w in watches.values() for s in w.steps for n in s["effective_lr"]})
    colors = dict(zip(names, _colors(len(names))))
    for i, (opt_name, w) in enumerate(watches.items()):
        for n in names:
            xs = [s["step"] for s in w.steps if n in s["effective_lr"]]
            ys = [s["effective_lr"][n] for s in w.steps if n in s["effective_lr"]]
            if xs:
                ax.plot(xs, ys, ls=styles[i % len(styles)], lw=1.2, color=colors[n], label=f"{opt_name} {n}")
    ax.set(xlabel="step", ylabel="effective step size", yscale="log",
           title="effective step size: Adam adapts, SGD is constant")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- gradients per layer

def _layer_grads(source) -> list[tuple[str, float, float, int]]:
    """(parameter name, RMS of its gradient, largest |gradient|, its number of dimensions) in forward order."""
    import torch

    from .tracing import Trace
    if isinstance(source, Trace):
        g = source.graph
        rows = []
        for _, d in g.nodes(data=True):
            if d["is_leaf"] and d["param"] is not None and d.get("grad"):
                n = math.prod(d["shape"]) if d["shape"] else 1
                rows.append((d["param"], d["grad"]["norm"] / math.sqrt(max(n, 1)), d["grad"]["abs_max"],
                             len(d["shape"] or ())))
        order = {n: i for i, n in enumerate(_param_order(source))}
        rows.sort(key=lambda r: order.get(r[0], len(order)))
        if not rows:
            raise LensValueError("this trace carries no parameter gradients: trace with "
                                 "lens.trace(loss, params=model, grads=True)")
        return rows
    if isinstance(source, torch.nn.Module):
        rows = [(n, float(p.grad.pow(2).mean().sqrt()), float(p.grad.abs().max()), p.dim())
                for n, p in source.named_parameters() if p.grad is not None]
        if not rows:
            raise LensValueError("no parameter of this model has a .grad: call loss.backward() first, "
                                 "or pass lens.trace(loss, params=model, grads=True)")
        return rows
    raise LensTypeError(f"gradient_flow takes a Trace made with grads=True, an nn.Module after backward(), "
                        f"or a dict of those; got {type(source).__name__}")


def _param_order(t) -> list[str]:
    names = [d["param"] for _, d in t.graph.nodes(data=True) if d["param"] is not None]
    return sorted(names, key=_natural)


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.replace(".", " . ").split()]


def gradient_flow(source, ax=None, *, weights_only: bool = True):
    """Where gradients vanish or explode: per layer (in forward order: first layer on the left) the RMS of
    its weight's gradient (dots, joined) and its largest element (bars), on a log scale.

    `source`: a Trace made with ``grads=True``, an ``nn.Module`` after ``backward()``, or a dict
    name -> either, drawn in distinct colours on the same axes (e.g. without and with BatchNorm), layer by
    layer. ``weights_only`` keeps parameters with 2 or more dimensions (no biases, no norm scales).

    Example:
        >>> import torch, autogradlens as lens
        >>> from autogradlens import plots
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> t = lens.trace(m(torch.randn(5, 3)).sum(), params=m, grads=True)
        >>> plots.gradient_flow(t).axes[0].get_yscale()
        'log'
    """
    sources = source if isinstance(source, dict) else {"": source}
    data = {k: [r for r in _layer_grads(s) if not weights_only or r[3] >= 2] for k, s in sources.items()}
    n = max(len(rows) for rows in data.values())
    fig, ax = _axes(ax, (max(6.4, 0.45 * n + 3), 3.8))
    width = 0.8 / max(len(data), 1)
    for i, ((k, rows), c) in enumerate(zip(data.items(), _colors(len(data)))):
        xs = [j + (i - (len(data) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r[2] for r in rows], width=width, color=c, alpha=0.3)
        ax.plot(xs, [r[1] for r in rows], "o-", color=c, lw=1.4, ms=4, label=(k + ": " if k else "") + "RMS")
    names = [[r[0] for r in rows] for rows in data.values()]
    ticks = names[0] if all(x == names[0] for x in names) else [f"layer {j + 1}" for j in range(n)]
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, rotation=60 if len(data) == 1 else 0, ha="right" if len(data) == 1 else "center",
                       fontsize=7)
    ax.set(yscale="log", ylabel="|gradient|", title="gradient flow per layer (dots: RMS, bars: largest element)")
    ax.axhspan(1e-12, 1e-6, color="#cccccc", alpha=0.25, lw=0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def activations(model, x, ax=None, *, kinds=None):
    """The lecture's activation histograms: run `model` on `x` and, for each activation module (Tanh,
    Sigmoid, ReLU, GELU by default), draw the distribution of its outputs with its mean, std and the share
    of saturated units (|tanh| > 0.97, sigmoid < 0.03 or > 0.97, ReLU == 0) in the legend."""
    import torch

    kinds = kinds or (torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.ReLU, torch.nn.GELU)
    outs, handles = [], []
    try:
        for name, m in model.named_modules():
            if isinstance(m, kinds):
                handles.append(m.register_forward_hook(
                    lambda mod, i, o, name=name: outs.append((name, type(mod).__name__, o.detach().flatten()))))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not outs:
        raise LensValueError("no activation module (Tanh, Sigmoid, ReLU, GELU) ran in this model; pass kinds=")
    fig, ax = _axes(ax, (7, 3.6))
    for (name, kind, o), c in zip(outs, _colors(len(outs))):
        sat = {"Tanh": (o.abs() > 0.97), "Sigmoid": (o < 0.03) | (o > 0.97), "ReLU": o == 0}.get(kind)
        extra = f", saturated {100 * sat.float().mean():.0f}%" if sat is not None else ""
        hist = torch.histc(o.float(), bins=60, min=float(o.min()), max=float(o.max()) + 1e-9)
        edges = torch.linspace(float(o.min()), float(o.max()) + 1e-9, 61)
        ax.plot(((edges[:-1] + edges[1:]) / 2).tolist(), hist.tolist(), color=c, lw=1.2,
                label=f"{name} ({kind}): mean {o.mean():+.2f}, std {o.std():.2f}{extra}")
    ax.set(xlabel="activation value", ylabel="count", title="activation distribution per layer")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
