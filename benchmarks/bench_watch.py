"""Step time with and without lens.watch: a 784-256-10 MLP (batch 128) and a small CNN (batch 64), SGD and Adam.

    python benchmarks/bench_watch.py [--rounds 30] [--steps 10] [--models mlp,cnn] [--threads N] [--clock cpu|wall]

One model trains throughout; every round times a few steps of each configuration (a new watch each time) in
a shuffled order, so a machine that gets busier or quieter affects all of them alike. Reported: the ratio of
medians against plain training, and the spread of the per-round ratios (25%-75%). Target (defaults): <= 1.10x.
The breakdown rows switch on one hook group at a time (saved tensors, gradients, optimizer updates); the
floor rows run no watch: "no-op hooks" installs the same PyTorch hooks with empty bodies, "statistics' reads"
does only the tensor passes the default statistics need each step (gradient, parameter and, for Adam,
exp_avg and exp_avg_sq norms, and the update measured as before - after), so what the watch adds beyond
them can be read off.
On a machine shared with other work, ``--clock cpu`` (this process's CPU time, the default) with one torch
thread is much steadier than wall time; ``--clock wall --threads 2`` measures what a user waits for.
"""

from __future__ import annotations

import argparse
import contextlib
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
    "floor: no-op hooks": "noop",
    "floor: statistics' reads": "reads",
}


@contextlib.contextmanager
def noop_hooks(model, opt):
    hs = [opt.register_step_pre_hook(lambda *a: None), opt.register_step_post_hook(lambda *a: None)]
    for p in model.parameters():
        hs += [p.register_hook(lambda g: None), p.register_post_accumulate_grad_hook(lambda p: None)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            yield None
    finally:
        for h in hs:
            h.remove()


def reads(model, opt):
    """The tensor passes of the default statistics, as a function run after each step (pre-step copy included)."""
    ps = list(model.parameters())
    bufs = [torch.empty_like(p) for p in ps]
    adam = isinstance(opt, torch.optim.Adam)

    def before():
        torch._foreach_norm([p.grad for p in ps], 2)
        if adam:
            torch._foreach_copy_(bufs, ps)

    def after():
        if adam:
            st = [opt.state[p] for p in ps]
            torch._foreach_sub_(bufs, ps)
            torch._foreach_norm(ps + bufs + [s["exp_avg"] for s in st] + [s["exp_avg_sq"] for s in st], 2)
        else:
            torch._foreach_norm(ps, 2)

    return before, after


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


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]


def steps(model, opt, xs, ys, hooks=None):
    before, after = hooks or (None, None)
    t0 = clock()
    for xb, yb in zip(xs, ys):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        if before:
            before()
        opt.step()
        if after:
            after()
    return (clock() - t0) / len(xs)


def bench(model_name, opt_name, rounds, n_steps):
    """One model and optimizer trained throughout; each round times `n_steps` steps of every configuration,
    in a shuffled order, so load changes on the machine hit all configurations alike."""
    model, opt, batch = make(model_name, opt_name)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_steps, batch, 1, 28, 28, generator=g)
    ys = torch.randint(0, 10, (n_steps, batch), generator=g)
    steps(model, opt, xs[:5], ys[:5])  # warm-up
    times = {c: [] for c in CONFIGS}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(CONFIGS)
        rng.shuffle(order)
        for c in order:
            if CONFIGS[c] is None:
                times[c].append(steps(model, opt, xs, ys))
                continue
            if CONFIGS[c] == "noop":
                with noop_hooks(model, opt):
                    times[c].append(steps(model, opt, xs, ys))
                continue
            if CONFIGS[c] == "reads":
                times[c].append(steps(model, opt, xs, ys, reads(model, opt)))
                continue
            with lens.watch(model, optimizer=opt, **CONFIGS[c]):
                steps(model, opt, xs[:2], ys[:2])  # the watch's first steps fill its caches
                times[c].append(steps(model, opt, xs, ys))
    plain = statistics.median(times["plain"])
    rows = []
    for c, ts in times.items():
        per_round = sorted(t / p for t, p in zip(ts, times["plain"]))
        q = statistics.quantiles(per_round, n=4)
        rows.append((c, statistics.median(ts) * 1e3, statistics.median(ts) / plain, q[0], q[2]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=list(CLOCK), default="cpu")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} time; {args.steps} steps x "
          f"{args.rounds} interleaved rounds; ratio = median step time / median plain step time")
    for m in args.models.split(","):
        for opt_name in ("sgd", "adam"):
            print(f"\n{MODELS[m][0]}, {opt_name}")
            print(f"  {'configuration':28s} {'ms/step':>8s} {'ratio':>7s} {'per-round 25%-75%':>18s}")
            for c, ms, ratio, lo, hi in bench(m, opt_name, args.rounds, args.steps):
                print(f"  {c:28s} {ms:8.2f} {ratio:7.3f} {lo:9.3f}-{hi:.3f}")


if __name__ == "__main__":
    main()
