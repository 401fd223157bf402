"""Step time with and without lens.watch on a 784-256-10 MLP, batch 128, SGD and Adam.

    python benchmarks/bench_watch.py

Runs are interleaved (plain, watched, plain, ...) and compared by the ratio of medians. Target: <= 1.10x.
The per-hook rows switch on one hook group at a time (saved tensors, AccumulateGrad, optimizer updates).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens

STEPS, ROUNDS = 30, 7


def make(opt_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if opt_name == "sgd" else torch.optim.Adam(model.parameters())
    return model, opt


def steps(model, opt, x, y):
    t0 = time.perf_counter()
    for i in range(STEPS):
        xb, yb = x[i], y[i]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return (time.perf_counter() - t0) / STEPS


def run(opt_name, **flags):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(STEPS, 128, 784, generator=g), torch.randint(0, 10, (STEPS, 128), generator=g)
    plain, watched = [], []
    for _ in range(ROUNDS):
        model, opt = make(opt_name)
        steps(model, opt, x, y)  # warm-up
        plain.append(steps(model, opt, x, y))
        model, opt = make(opt_name)
        steps(model, opt, x, y)
        with lens.watch(model, optimizer=opt, **flags):
            watched.append(steps(model, opt, x, y))
    return statistics.median(plain), statistics.median(watched)


def main():
    print(f"784-256-10 MLP, batch 128, {STEPS} steps x {ROUNDS} interleaved rounds, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'optimizer':9s} {'hooks':28s} {'plain ms':>9s} {'watched ms':>11s} {'ratio':>7s}")
    configs = [("all hooks", {}),
               ("saved tensors only", {"grads": False, "updates": False}),
               ("AccumulateGrad only", {"saved": False, "updates": False}),
               ("optimizer updates only", {"saved": False, "grads": False})]
    for opt_name in ("sgd", "adam"):
        for label, flags in configs:
            p, w = run(opt_name, **flags)
            print(f"{opt_name:9s} {label:28s} {p * 1e3:9.2f} {w * 1e3:11.2f} {w / p:7.3f}")


if __name__ == "__main__":
    main()
