"""Step time with and without lens.watch, as users see it: wall time at torch's default threads. A 784-256-10 MLP
(batch 128) with SGD and with Adam, and a small CNN (batch 64). Target (default settings): <= 1.10x.

    python benchmarks/bench_watch.py [--rounds 30] [--steps 20] [--models mlp,cnn] [--threads 0] [--clock wall|cpu]

One model trains throughout; every round times `--steps` steps of each configuration in a shuffled order, so a
machine that gets busier or quieter affects all of them alike. A watch is timed in its steady state: each round
enters a new watch and first runs as many untimed steps as it details in full at its start (`sample`).
Reported: the ratio of medians against plain training, and the spread of the per-round ratios (25%-75%).
Rows: the default watch; every step detailed (sample=1, what the defaults avoid); one hook group at a time (the
rows without parameter hooks notice backward passes with a hook on the model's output, whose forward hooks then
run every step: they cost more than the defaults); and two floors without a watch: the same PyTorch hooks with
empty bodies, and only the tensor reads the statistics need (gradient, parameter and, for Adam, exp_avg and
exp_avg_sq norms, and the update measured as before - after) taken every step — what detailing every step costs
at the least.
On a machine shared with other work, ``--clock cpu --threads 1`` (this process's CPU time) is steadier.
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

SAMPLE = lens.Watch.__init__.__kwdefaults__["sample"]  # the default watch details its first SAMPLE steps
CONFIGS = {
    "plain": None,
    "watch (defaults)": {},
    "watch, every step detailed": {"sample": 1},
    "  saved tensors only": {"grads": False, "updates": False},
    "  gradients only": {"saved": False, "updates": False},
    "  optimizer updates only": {"saved": False, "grads": False},
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
    """The tensor passes of the statistics, as a function run after each step (pre-step copy included)."""
    ps = list(model.parameters())
    bufs = [torch.empty_like(p) for p in ps]
    adam = isinstance(opt, torch.optim.Adam)

    def before():
        torch._foreach_norm([p.grad for p in ps], 2)
        if adam:
            torch._foreach_copy_(bufs, [p.detach() for p in ps])

    def after():
        if adam:
            st = [opt.state[p] for p in ps]
            torch._foreach_sub_(bufs, [p.detach() for p in ps])
            torch._foreach_norm([p.detach() for p in ps] + bufs + [s["exp_avg"] for s in st]
                                + [s["exp_avg_sq"] for s in st], 2)
        else:
            torch._foreach_norm([p.detach() for p in ps], 2)

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
clock = CLOCK["wall"]


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
                warm = CONFIGS[c].get("sample", SAMPLE)
                for i in range(0, warm, n_steps):  # the steps it details in full at its start
                    k = min(n_steps, warm - i)
                    steps(model, opt, xs[:k], ys[:k])
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
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=list(CLOCK), default="wall")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
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
