"""Training time of `training.fit` on digits (the test's and the demo's setting: MLP 64-64-10, 30 epochs, batch 32)
against a plain PyTorch loop over the same batches, for SGD and Adam, with and without watch.

    python benchmarks/bench_training.py [ROUNDS]

Runs are interleaved (plain, fit, fit under watch, plain, ...) and compared by the ratio of medians. This replaces
the old `h.seconds < 60` test assertion: speed is measured here, never asserted in tests/.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from autogradlens import data, training
from autogradlens.examples import MLP

EPOCHS, BATCH = 30, 32


def plain(d, name):
    torch.manual_seed(0)
    model = MLP((d.n_features, 64, d.n_classes))
    opt = training.make_optimizer(name, model.parameters())
    gen = torch.Generator().manual_seed(0)
    n = len(d.x_train)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(model(d.x_train[idx]), d.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        training.accuracy(model, d.x_train, d.y_train), training.accuracy(model, d.x_test, d.y_test)
    return time.perf_counter() - t0


def fitted(d, name, watch):
    torch.manual_seed(0)
    t0 = time.perf_counter()
    h = training.fit(MLP((d.n_features, 64, d.n_classes)), d, name, epochs=EPOCHS, batch_size=BATCH,
                     watch=watch, progress=False)
    return time.perf_counter() - t0, h.final_test_acc


def main(rounds: int = 3):
    torch.set_num_threads(1)  # small matrices: one thread is faster and far less noisy on a shared machine
    d = data.digits()
    print(f"digits, MLP 64-64-10, {EPOCHS} epochs x {len(d.x_train) // BATCH + 1} steps, batch {BATCH}; "
          f"{rounds} interleaved rounds, torch threads {torch.get_num_threads()}")
    print(f"{'optimizer':9s} {'plain s':>8s} {'fit s':>7s} {'ratio':>6s} {'watched s':>10s} {'ratio':>6s} "
          f"{'test acc':>9s}")
    for name in ("sgd", "adam"):
        p, f, w, acc = [], [], [], 0.0
        for _ in range(rounds):
            p.append(plain(d, name))
            s, acc = fitted(d, name, False)
            f.append(s)
            w.append(fitted(d, name, True)[0])
        mp, mf, mw = (statistics.median(x) for x in (p, f, w))
        print(f"{name:9s} {mp:8.2f} {mf:7.2f} {mf / mp:6.2f} {mw:10.2f} {mw / mp:6.2f} {acc:9.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
