"""Step time with and without lens.watch: a 784-256-10 MLP (batch 128) and a small CNN (batch 64), SGD and Adam.

    python benchmarks/bench_watch.py [--rounds 9] [--steps 30] [--models mlp,cnn]

Every round runs each configuration once (fresh model, warm-up, then timed steps) in a shuffled order, so a
machine that gets busier or quieter affects all of them alike. Reported: the ratio of medians against plain
training, and the spread of the per-round ratios (25%-75%). Target with default settings: <= 1.10x.
The breakdown rows switch on one hook group at a time (saved tensors, gradients, optimizer updates).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens

CONFIGS = {
    "plain": None,
    "watch (defaults)": {},
    "  saved tensors only": {"grads": False, "updates": False},
    "  gradients only": {"saved": False, "updates": False},
    "  optimizer updates only": {"saved": False, "grads": False},
    "watch every=10": {"every": 10},
}


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)), 128


def cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 10)), 64


MODELS = {"mlp": ("784-256-10 MLP, batch 128", mlp), "cnn": ("CNN 2 conv + linear, batch 64", cnn)}


def make(model_name, opt_name):
    torch.manual_seed(0)
    model, batch = MODELS[model_name][1]()
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if opt_name == "sgd" else torch.optim.Adam(model.parameters())
    return model, opt, batch


def steps(model, opt, xs, ys):
    t0 = time.perf_counter()
    for xb, yb in zip(xs, ys):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return (time.perf_counter() - t0) / len(xs)


def one(model_name, opt_name, flags, n_steps):
    model, opt, batch = make(model_name, opt_name)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_steps, batch, 1, 28, 28, generator=g)
    ys = torch.randint(0, 10, (n_steps, batch), generator=g)
    steps(model, opt, xs[:5], ys[:5])  # warm-up
    if flags is None:
        return steps(model, opt, xs, ys)
    with lens.watch(model, optimizer=opt, **flags):
        steps(model, opt, xs[:3], ys[:3])  # the watch's first steps fill its caches
        return steps(model, opt, xs, ys)


def bench(model_name, opt_name, rounds, n_steps):
    times = {c: [] for c in CONFIGS}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(CONFIGS)
        rng.shuffle(order)
        for c in order:
            times[c].append(one(model_name, opt_name, CONFIGS[c], n_steps))
    plain = statistics.median(times["plain"])
    rows = []
    for c, ts in times.items():
        per_round = sorted(t / p for t, p in zip(ts, times["plain"]))
        q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else [per_round[0]] * 3
        rows.append((c, statistics.median(ts) * 1e3, statistics.median(ts) / plain, q[0], q[2]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--models", default="mlp,cnn")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps x {args.rounds} "
          "interleaved rounds; ratio = median step time / median plain step time")
    for m in args.models.split(","):
        for opt_name in ("sgd", "adam"):
            print(f"\n{MODELS[m][0]}, {opt_name}")
            print(f"  {'configuration':28s} {'ms/step':>8s} {'ratio':>7s} {'per-round 25%-75%':>18s}")
            for c, ms, ratio, lo, hi in bench(m, opt_name, args.rounds, args.steps):
                print(f"  {c:28s} {ms:8.2f} {ratio:7.3f} {lo:9.3f}-{hi:.3f}")


if __name__ == "__main__":
    main()
