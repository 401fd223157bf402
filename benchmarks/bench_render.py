"""Pictures at size: how big the default picture is, how fast notebook display and to_text are.

    python benchmarks/bench_render.py           # prints medians (the machine's load moves them: compare ratios)

Targets (issue 10): a 2-layer nn.TransformerEncoder fits in 2000 x 2000 pt by default; notebook display of a
20k-node trace < 2 s; to_text linear in time and memory (per-node cost at 100k ~ at 20k).
Issue 18: notebook displays fit JupyterLab's column (text >= 8 px there, see tests/test_browser.py for the browser
measurement); the display of a Value graph of ~65k values takes a second or two, not minutes.
"""

from __future__ import annotations

import os
import re
import sys
import tracemalloc
import warnings

import torch
import torch.nn as nn
from _timing import median_time  # (this folder)

import autogradlens as lens


def transformer(layers: int = 2):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True), layers,
                                  enable_nested_tensor=False)
    return m


KEEP = []  # PyTorch (2.13) overflows the C stack freeing a 100k-deep graph whose nodes were seen from Python:
# keep the chains alive and leave with os._exit


def chain(n: int):
    x = torch.randn(2, requires_grad=True)
    y = x
    for _ in range(n):
        y = y * 1.0001
    KEEP.append(y)
    return lens.trace(y.sum())


def value_mlp(n_in: int = 64, hidden=(64, 64), batch: int = 4):
    """An MLP's loss as lens.Values (about 72k values; the demo's MLP step had 65,818)."""
    import random

    random.seed(0)
    V = lens.Value
    layers = [[([V(random.uniform(-1, 1)) for _ in range(a)], V(0.0)) for _ in range(b)]
              for a, b in zip((n_in, *hidden), (*hidden, 1))]
    loss = V(0.0)
    for _ in range(batch):
        x = [V(random.uniform(-1, 1)) for _ in range(n_in)]
        for i, layer in enumerate(layers):
            x = [sum((w * xi for w, xi in zip(ws, x)), b) for ws, b in layer]
            if i < len(layers) - 1:
                x = [v.tanh() for v in x]
        loss = loss + (x[0] - 1.0) ** 2
    loss.backward()
    return loss


def size(svg: str) -> tuple[float, float]:
    w, h = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups()
    return float(w), float(h)




def main():
    m = transformer()
    x = torch.randn(2, 4, 8)
    loss = m(x).pow(2).mean()
    plain = lens.trace(loss, params=m)
    with lens.modules(m):
        loss = m(x).pow(2).mean()
    rec = lens.trace(loss, params=m, grads=True)
    print(f"2-layer TransformerEncoder: {len(plain)} nodes")
    for name, t, opts in (("params only, default", plain, {}), ("lens.modules, default", rec, {}),
                          ("lens.modules, depth=99", rec, {"depth": 99}), ("everything (limit=None)", plain,
                                                                            {"limit": None})):
        w, h = size(t.to_svg(**opts))
        print(f"  {name:26s} {w:7.0f} x {h:7.0f} pt   fits 2000x2000: {w <= 2000 and h <= 2000}")

    print("\nnotebook display (Trace._repr_mimebundle_), median of 3:")
    for n in (2_000, 20_000):
        t = chain(n)
        s = median_time(t._repr_mimebundle_)
        print(f"  {len(t):6d} nodes  {s:6.2f} s   (< 2 s: {s < 2})")

    print("\nfitted to a notebook column (render.fit, as the display does):")
    for name, t in (("2-layer transformer, params only", plain), ("with lens.modules and grads", rec)):
        f = lens.render.fit(t)
        print(f"  {name:34s} {f.natural:5.0f} px natural, drawn at {100 * f.scale:3.0f}%, smallest text "
              f"{f.text_px:4.1f} px, {f.tried} layouts tried, {median_time(lambda t=t: lens.render.fit(t)):5.2f} s")
    v = value_mlp()
    t = median_time(lambda: lens.trace(v), 1)
    tv = lens.trace(v)
    s = median_time(tv._repr_mimebundle_)
    print(f"  a Value graph of {len(tv):,} values: trace {t:5.2f} s, notebook display {s:5.2f} s (median of 3)")

    print("\nto_text: time and peak memory of the text")
    per = {}
    for n in (20_000, 100_000):
        t = chain(n)
        s = median_time(t.to_text, 1)
        tracemalloc.start()
        text = t.to_text()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        per[n] = s / n
        print(f"  {n:6d}-deep chain  {s:6.2f} s  {len(text) / 1e6:6.1f} MB of text  peak {peak / 1e6:6.1f} MB")
    print(f"  time per node at 100k / at 20k: {per[100_000] / per[20_000]:.2f} (1.0 = linear)")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
