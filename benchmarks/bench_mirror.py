"""Time `lens.mirror` (tensor mode) against one forward + backward, on a few small models.

    python benchmarks/bench_mirror.py   # medians of 15 runs of CPU time (robust to a loaded machine);
                                         # compare two checkouts by running it in both
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens
from autogradlens.examples import makemore


def mlp():
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return lambda: F.cross_entropy(m(torch.randn(64, 64)), torch.randint(0, 10, (64,))), m


def cnn():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    return lambda: F.cross_entropy(m(torch.randn(8, 3, 8, 8)), torch.randint(0, 10, (8,))), m


def gpt():
    d, vocab = 32, 50
    emb, ln1, ln2, lnf = nn.Embedding(vocab, d), nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
    att, mlp_, head = nn.MultiheadAttention(d, 4, batch_first=True), \
        nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)), nn.Linear(d, vocab)
    m = nn.ModuleDict({"emb": emb, "ln1": ln1, "ln2": ln2, "lnf": lnf, "att": att, "mlp": mlp_, "head": head})

    def loss():
        idx = torch.randint(0, vocab, (4, 16))
        x = emb(idx)
        h = ln1(x)
        x = x + att(h, h, h, need_weights=False)[0]
        x = x + mlp_(ln2(x))
        return F.cross_entropy(head(lnf(x)).view(-1, vocab), idx.view(-1))
    return loss, m


def makemore_net():
    return lambda: makemore()[0], None


def main():
    torch.manual_seed(0)
    print(f"{'model':10s} {'fwd+bwd ms':>10s} {'mirror ms':>10s} {'ratio':>6s}")
    for name, build in [("mlp", mlp), ("cnn", cnn), ("gpt", gpt), ("makemore", makemore_net)]:
        f, params = build()
        fb, mir = [], []
        for _ in range(15):
            t0 = time.process_time()
            f().backward()
            fb.append(time.process_time() - t0)
            loss = f()
            t0 = time.process_time()
            lens.mirror(loss, params=params, mode="tensor")
            mir.append(time.process_time() - t0)
        a, b = statistics.median(fb), statistics.median(mir)
        print(f"{name:10s} {a * 1e3:10.2f} {b * 1e3:10.2f} {b / a:6.1f}", flush=True)


if __name__ == "__main__":
    main()
