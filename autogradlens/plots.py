"""matplotlib pictures of training, of a Watch and of gradients; every function returns the Figure.

Figures are made without pyplot (the user's backend is left alone) and show themselves in a notebook.
Curves that jump from step to step are drawn raw and faint, with a moving average on top.

Every figure fits a notebook's output column at its natural size (at most WIDTH inches: 840 px at the
notebook's 100 dpi, the column is 848 px) and writes no text smaller than FONT points (11 px there);
legends sit beside or below the data, never on it; curves of one panel differ in colour and in line style.
"""

from __future__ import annotations

import io
import math

from .errors import LensTypeError, LensValueError

_FIG = None
WIDTH = 8.4  # inches: 840 px at the 100 dpi of a notebook's PNG, inside JupyterLab's 848 px column
FONT = 8  # points: the smallest text a figure writes
_STYLES = ("-", "--", ":", "-.")


def _figure_class():
    global _FIG
    if _FIG is None:
        from matplotlib.figure import Figure

        class LensFigure(Figure):
            """A matplotlib Figure that shows itself as a PNG in a notebook, at most COLUMN px wide."""

            def _repr_png_(self):
                return png(self, 100, COLUMN)[0]

        _FIG = LensFigure
    return _FIG


COLUMN = 840  # px: the widest PNG a notebook gets (JupyterLab's column is 848 px)


def png(fig, dpi: int, most: int) -> tuple[bytes, float]:
    """The figure as a PNG (cropped to what it draws) and its dpi: `dpi`, or less if that is wider than `most` px."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    width = int.from_bytes(buf.getvalue()[16:20], "big")  # the PNG header's IHDR width
    if width > most:
        dpi = dpi * most / width * 0.995
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue(), dpi


def figure(size=(6.4, 3.6), ncols: int = 1, nrows: int = 1):
    """A new Figure and its axes (a list when there are several), made without pyplot; at most WIDTH inches
    wide, its text at least FONT points."""
    from matplotlib import rc_context

    w, h = size
    if w > WIDTH:
        w, h = WIDTH, h * max(0.75, WIDTH / w)
    with rc_context({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": FONT,
                     "ytick.labelsize": FONT, "legend.fontsize": FONT, "legend.title_fontsize": FONT}):
        fig = _figure_class()(figsize=(w, h))
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


def _curve(ax, xs, ys, color, label, k: int = 20, ls: str = "-"):
    """Raw values faint, their moving average on top, one colour (and a line style of its own)."""
    ax.plot(xs, ys, color=color, alpha=0.25, lw=0.7)
    ax.plot(xs, _smooth(list(ys), k) if len(ys) > k else ys, color=color, lw=1.5, ls=ls, label=label)


def _legend_below(fig, axes, ncol: int = 4) -> None:
    """One legend under the panels (off the data), for the curves of the first panel."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=FONT, frameon=False)


def _param_style(name: str, i: int, n: int):
    """Colour by layer, line style by kind (weight solid, bias dashed), so that curves lying on each other
    stay distinguishable."""
    return _colors(n)[i], "--" if name.endswith("bias") else ":" if not name.endswith("weight") else "-"


def training_curves(histories: dict):
    """Loss per step (raw faint, moving average on top) and test accuracy per epoch, one colour per optimizer."""
    fig, (a1, a2) = figure((WIDTH, 3.4), ncols=2)
    for i, ((name, h), c) in enumerate(zip(histories.items(), _colors(len(histories)))):
        label = getattr(h, "optimizer", name)
        _curve(a1, range(len(h.loss)), h.loss, c, label, ls=_STYLES[i % len(_STYLES)])
        a2.plot(range(1, len(h.test_acc) + 1), h.test_acc, marker="o", ms=3, color=c, ls=_STYLES[i % len(_STYLES)],
                label=label)
    a1.set(xlabel="step", ylabel="training loss", yscale="log", title="loss (faint: every step; line: average)")
    a2.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    a1.legend(loc="upper right")
    a2.legend(loc="lower right")
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
        fig, axes = figure((WIDTH, 3.6 if len(ws) == 1 else 3.9), ncols=len(ws))
        axes = axes if isinstance(axes, list) else [axes]
    else:
        fig, axes = ax.figure, [ax]
    names = sorted({n for w in ws.values() for s in w.steps for n in s[key]}, key=_natural)
    layers = sorted({n.rsplit(".", 1)[0] for n in names}, key=_natural)
    for a, (opt, w) in zip(axes, ws.items()):
        for n in names:
            xs = [s["step"] for s in w.steps if n in s[key]]
            ys = [s[key][n] for s in w.steps if n in s[key]]
            if xs:
                c, ls = _param_style(n, layers.index(n.rsplit(".", 1)[0]), len(layers))
                _curve(a, xs, ys, c, n, ls=ls)
        if hline is not None:
            a.axhline(hline, color="#999999", ls="--", lw=0.8)
        a.set(xlabel="step", ylabel=ylabel, yscale="log", title=f"{opt}: {title}" if opt else title)
    if len(axes) > 1:  # the same scale side by side, so the optimizers compare at a glance
        lo = min(a.get_ylim()[0] for a in axes)
        hi = max(a.get_ylim()[1] for a in axes)
        for a in axes:
            a.set_ylim(lo, hi)
    if ax is None and names:  # one legend for the panels, below them, off the data
        fig.tight_layout(rect=(0, 0.06 + 0.05 * ((len(names) - 1) // 4), 1, 1))
        _legend_below(fig, axes)
    else:
        if names:
            axes[0].legend(fontsize=FONT, ncol=2)
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
    fig, ax = _axes(ax, (WIDTH, 3.4))
    steps = [s for s in watch.steps if s["detailed"]]  # the others were not measured
    types = sorted({t for s in steps for t in s["saved_by_type"]})
    xs = [s["step"] for s in steps]
    ys = [[s["saved_by_type"].get(t, 0) / 1024 for s in steps] for t in types]
    if xs and types:
        ax.stackplot(xs, ys, labels=types, alpha=0.85, colors=_colors(len(types)))
        ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the data
        ax.set_ylim(0, max(sum(col) for col in zip(*ys)) * 1.05 or 1)
    ax.set(xlabel="step", ylabel="KiB saved for backward", title="saved tensors by node type (deduplicated)")
    fig.tight_layout()
    return fig


def step_sizes(watches: dict, ax=None):
    """Effective learning rate per parameter: SGD's is its constant lr; Adam's is lr / (sqrt(v_hat) + eps)
    (median over the elements), which adapts per parameter and over time."""
    fig, ax = _axes(ax, (WIDTH, 3.8))
    names = sorted({n for w in watches.values() for s in w.steps for n in s["effective_lr"]}, key=_natural)
    colors = dict(zip(names, _colors(len(names))))
    for i, (opt_name, w) in enumerate(watches.items()):
        series = {n: ([s["step"] for s in w.steps if n in s["effective_lr"]],
                      [s["effective_lr"][n] for s in w.steps if n in s["effective_lr"]]) for n in names}
        series = {n: xy for n, xy in series.items() if xy[0]}
        if len(series) > 1 and len({tuple(xy[1]) for xy in series.values()}) == 1:  # one step size for all
            xs, ys = next(iter(series.values()))  # (SGD): one line, not several lying on each other
            ax.plot(xs, ys, ls=_STYLES[i % len(_STYLES)], lw=1.6, color="#333333", label=f"{opt_name} (every "
                    "parameter)")
            continue
        for n, (xs, ys) in series.items():
            ax.plot(xs, ys, ls=_STYLES[i % len(_STYLES)], lw=1.4, color=colors[n], label=f"{opt_name} {n}")
    ax.set(xlabel="step", ylabel="effective step size", yscale="log",
           title="effective step size: Adam adapts, SGD is constant")
    if names:  # beside the data, one column per optimizer
        ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
    fig, ax = _axes(ax, (min(WIDTH, max(6.4, 0.45 * n + 3)), 3.8))
    width = 0.8 / max(len(data), 1)
    for i, ((k, rows), c) in enumerate(zip(data.items(), _colors(len(data)))):
        xs = [j + (i - (len(data) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r[2] for r in rows], width=width, color=c, alpha=0.3)
        ax.plot(xs, [r[1] for r in rows], "o-", color=c, lw=1.4, ms=4, label=(k + ": " if k else "") + "RMS")
    names = [[r[0] for r in rows] for rows in data.values()]
    ticks = names[0] if all(x == names[0] for x in names) else [f"layer {j + 1}" for j in range(n)]
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, rotation=60 if len(data) == 1 else 0, ha="right" if len(data) == 1 else "center",
                       fontsize=FONT)
    ax.set(yscale="log", ylabel="|gradient|", title="gradient flow per layer (dots: RMS, bars: largest element)")
    ax.axhspan(1e-12, 1e-6, color="#cccccc", alpha=0.25, lw=0)
    ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def activations(model, x, ax=None, *, kinds=None):
    """The lecture's activation histograms: run `model` on `x` and, for each activation module (Tanh,
    Sigmoid, ReLU, GELU by default), draw the distribution of its outputs in a small panel of its own (first
    layer first, one x axis for all), titled with its mean, std and the share of saturated units (|tanh| >
    0.97, sigmoid < 0.03 or > 0.97, ReLU == 0). With `ax`, every layer's curve goes on that one axes."""
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
    if ax is not None:  # one given axes: every layer's curve on it
        panels, fig = [ax] * len(outs), ax.figure
    else:  # one small panel per layer, in forward order, on a shared x axis
        cols = min(4, len(outs))
        rows = -(-len(outs) // cols)
        fig, panels = figure((WIDTH, 2.1 * rows + 0.4), ncols=cols, nrows=rows)
        panels = panels if isinstance(panels, list) else [panels]
        for extra in panels[len(outs):]:
            extra.set_visible(False)
    lo = min(float(o.min()) for _, _, o in outs)
    hi = max(float(o.max()) for _, _, o in outs) + 1e-9
    for a, (name, kind, o), c in zip(panels, outs, _colors(len(outs))):
        sat = {"Tanh": (o.abs() > 0.97), "Sigmoid": (o < 0.03) | (o > 0.97), "ReLU": o == 0}.get(kind)
        extra = f", saturated {100 * sat.float().mean():.0f}%" if sat is not None else ""
        hist = torch.histc(o.float(), bins=60, min=lo, max=hi)
        edges = torch.linspace(lo, hi, 61)
        label = f"{name} ({kind}): mean {o.mean():+.2f}, std {o.std():.2f}{extra}"
        a.fill_between(((edges[:-1] + edges[1:]) / 2).tolist(), hist.tolist(), color=c, alpha=0.5, lw=0)
        a.plot(((edges[:-1] + edges[1:]) / 2).tolist(), hist.tolist(), color=c, lw=1.2, label=label)
        if ax is None:
            a.set_title(f"{name} {kind}\nmean {o.mean():+.2f}, std {o.std():.2f}" + extra.replace(", ", "\n"),
                        fontsize=FONT)
            a.set_xlim(lo, hi)
            a.tick_params(labelsize=FONT)
            a.set_yticks([])
    if ax is not None:
        ax.set(xlabel="activation value", ylabel="count", title="activation distribution per layer")
        ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        fig.suptitle("activation distribution per layer (x: activation value)", fontsize=9)
    fig.tight_layout()
    return fig
