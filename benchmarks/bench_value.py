"""lens.Value vs micrograd's Value in the user's own loops, measured in the same process, interleaved.

    python benchmarks/bench_value.py [--repeats 7]

1. The lecture's training loop: a 3-16-16-1 MLP, 20 samples, 5 SGD steps.
2. The 111k-node step: a 64-16-10 MLP (micrograd.nn's Neuron/Layer/MLP, written out below for both engines)
   over 32 samples of the digits data, squared error against one-hot targets summed as micrograd's demo
   does, one SGD step (forward, backward, update): about 111,000 Values per step, the collector on, as in a
   notebook. Each timed run starts after gc.collect() (micrograd's closures make reference cycles that
   only the collector frees; without it the next run pays for them). For reference, the same step with a
   minimal __slots__ engine (tuple ``_prev``, shared backward functions; written below).
3. Memory per Value (tracemalloc): the Value object with its float, in a chain of 100,000 products.

Both engines compute the same numbers: the forward bit for bit, the gradients to the last bits
(micrograd adds gradients into shared nodes in the hash order of its set of children). Ratios are
lens time / micrograd time, from the medians of the interleaved runs (aim: <= 0.15 on the 111k-node step).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc

import micrograd.engine as mg

from autogradlens import Value
from autogradlens.data import digits


# ---------------------------------------------------------------- 1. the lecture's loop
def mlp_params(seed, sizes=(3, 16, 16, 1)):
    rng = random.Random(seed)
    return [[[rng.uniform(-1, 1) for _ in range(a + 1)] for _ in range(b)] for a, b in zip(sizes[:-1], sizes[1:])]


def train(V, params, xs, ys, steps=5):
    layers = [[[V(w) for w in neuron] for neuron in layer] for layer in params]
    flat = [w for layer in layers for neuron in layer for w in neuron]
    losses = []
    for _ in range(steps):
        loss = V(0.0)
        for x, y in zip(xs, ys):
            act = [V(v) for v in x]
            for li, layer in enumerate(layers):
                out = []
                for neuron in layer:
                    s = neuron[-1]
                    for w, a in zip(neuron[:-1], act):
                        s = s + w * a
                    out.append(s.relu() if li < len(layers) - 1 else s)
                act = out
            loss = loss + (act[0] - y) ** 2
        for w in flat:
            w.grad = 0
        loss.backward()
        for w in flat:
            w.data -= 0.001 * w.grad
        losses.append(loss.data)
    return losses


# ---------------------------------------------------------------- 2. the 111k-node step (micrograd.nn, written out)
class Neuron:
    def __init__(self, V, w, b, nonlin):
        self.w, self.b, self.nonlin = [V(x) for x in w], V(b), nonlin

    def __call__(self, x):
        act = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        return act.relu() if self.nonlin else act

    def parameters(self):
        return self.w + [self.b]


class MLP:
    def __init__(self, V, weights):
        self.layers = [[Neuron(V, w, 0.0, i < len(weights) - 1) for w in layer] for i, layer in enumerate(weights)]

    def __call__(self, x):
        for layer in self.layers:
            x = [n(x) for n in layer]
        return x

    def parameters(self):
        return [p for layer in self.layers for n in layer for p in n.parameters()]


def digits_batch(n=32):
    d = digits()
    xs = d.x_train[:n].double().tolist()
    ys = [[1.0 if k == c else 0.0 for k in range(10)] for c in d.y_train[:n].tolist()]
    return xs, ys


def step_weights(seed=0, sizes=(64, 16, 10)):
    rng = random.Random(seed)
    return [[[rng.uniform(-1, 1) / a**0.5 for _ in range(a)] for _ in range(b)] for a, b in zip(sizes[:-1], sizes[1:])]


def one_step(V, weights, xs, ys, lr=0.01):
    """Times zero_grad, the forward over the batch, the loss, backward and the SGD update (the collector on).
    Returns (seconds, loss, updated weights, Values in the graph)."""
    model = MLP(V, weights)
    params = model.parameters()
    gc.collect()  # each engine starts clean (micrograd's closures make cycles only the collector frees)
    t0 = time.perf_counter()
    for p in params:
        p.grad = 0
    loss = sum((sum((o - t) ** 2 for o, t in zip(model(x), y)) for x, y in zip(xs, ys)), V(0.0))
    loss.backward()
    for p in params:
        p.data -= lr * p.grad
    dt = time.perf_counter() - t0
    return dt, loss.data, [p.data for p in params], count_nodes(loss)


def count_nodes(root) -> int:
    seen, stack = set(), [root]
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(v._prev)
    return len(seen)


class Slots:
    """A reference point: a minimal micrograd with __slots__, a tuple _prev and shared backward functions."""

    __slots__ = ("data", "grad", "_prev", "_op", "_bw")

    def __init__(self, data, _children=(), _op="", _bw=None):
        self.data, self.grad, self._prev, self._op, self._bw = data, 0, _children, _op, _bw

    def __add__(self, other):
        other = other if isinstance(other, Slots) else Slots(other)
        return Slots(self.data + other.data, (self, other), "+", _slots_add)

    def __mul__(self, other):
        other = other if isinstance(other, Slots) else Slots(other)
        return Slots(self.data * other.data, (self, other), "*", _slots_mul)

    def __pow__(self, p):
        return Slots(self.data**p, (self,), p, _slots_pow)

    def relu(self):
        return Slots(0 if self.data < 0 else self.data, (self,), "ReLU", _slots_relu)

    __radd__, __rmul__ = __add__, __mul__

    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        return self + (-other)

    def backward(self):
        topo, seen, stack = [], set(), [(self, False)]
        while stack:
            v, done = stack.pop()
            if done:
                topo.append(v)
            elif v not in seen:
                seen.add(v)
                stack.append((v, True))
                stack.extend((c, False) for c in reversed(v._prev) if c not in seen)
        self.grad = 1
        for v in reversed(topo):
            if v._bw:
                v._bw(v)


def _slots_add(v):
    a, b = v._prev
    a.grad += v.grad
    b.grad += v.grad


def _slots_mul(v):
    a, b = v._prev
    a.grad += b.data * v.grad
    b.grad += a.data * v.grad


def _slots_pow(v):
    (a,) = v._prev
    a.grad += (v._op * a.data ** (v._op - 1)) * v.grad


def _slots_relu(v):
    v._prev[0].grad += (v.data > 0) * v.grad


# ---------------------------------------------------------------- 3. memory
def bytes_per_value(V, n=100_000) -> float:
    gc.collect()
    tracemalloc.start()
    x = V(1.0)
    before = tracemalloc.get_traced_memory()[0]
    y = x
    for _ in range(n):
        y = y * x  # one new Value per step: the product (its operands are Values already)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del y
    return used / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    rng = random.Random(0)
    xs = [[rng.uniform(-1, 1) for _ in range(3)] for _ in range(20)]
    ys = [rng.choice([-1.0, 1.0]) for _ in range(20)]
    params = mlp_params(0)
    t_mg, t_lens = [], []
    for _ in range(args.repeats):
        gc.collect()
        t0 = time.perf_counter()
        a = train(mg.Value, params, xs, ys)
        t_mg.append(time.perf_counter() - t0)
        gc.collect()
        t0 = time.perf_counter()
        b = train(Value, params, xs, ys)
        t_lens.append(time.perf_counter() - t0)
    rel = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    m, l = statistics.median(t_mg), statistics.median(t_lens)
    print(f"1. lecture-style MLP 3-16-16-1, 20 samples, 5 SGD steps, median of {args.repeats} interleaved runs")
    print(f"   micrograd {m * 1e3:8.1f} ms   lens.Value {l * 1e3:8.1f} ms   lens/micrograd {l / m:.3f} "
          f"(x{m / l:.1f} faster)   losses equal to {rel:.1e} relative")

    sx, sy = digits_batch()
    w = step_weights()
    s_mg, s_lens, s_slots = [], [], []
    for _ in range(args.repeats):
        dt, lm, pm, _ = one_step(mg.Value, w, sx, sy)
        s_mg.append(dt)
        dt, ll, pl, nodes = one_step(Value, w, sx, sy)
        s_lens.append(dt)
        s_slots.append(one_step(Slots, w, sx, sy)[0])
    worst = max(abs(p - q) / max(abs(q), 1e-300) for p, q in zip(pl, pm))
    paused = []
    for _ in range(args.repeats):  # for reference: what the collector still costs lens.Value
        gc.disable()
        try:
            paused.append(one_step(Value, w, sx, sy)[0])
        finally:
            gc.enable()
    m, l = statistics.median(s_mg), statistics.median(s_lens)
    print(f"2. the {nodes:,}-node step: MLP 64-16-10, 32 digits samples, squared error, one SGD step, collector on, "
          f"median of {args.repeats} interleaved runs")
    print(f"   micrograd {m * 1e3:8.1f} ms   lens.Value {l * 1e3:8.1f} ms   lens/micrograd {l / m:.3f} "
          f"(goal <= 0.15)   loss {ll!r} vs {lm!r} (forward {'bit-identical' if ll == lm else 'DIFFERS'}), "
          f"updated weights equal to {worst:.1e} relative")
    print(f"   runs (ms)  micrograd {[round(x * 1e3) for x in s_mg]}  lens {[round(x * 1e3) for x in s_lens]}")
    print(f"   references: a minimal __slots__ engine (tuple _prev) {statistics.median(s_slots) * 1e3:.1f} ms; "
          f"lens.Value with the collector paused (not a user's setting) {statistics.median(paused) * 1e3:.1f} ms")

    bm, bl = bytes_per_value(mg.Value), bytes_per_value(Value)
    print(f"3. memory per Value (tracemalloc, a chain of 100,000 products): micrograd {bm:.0f} B, "
          f"lens.Value {bl:.0f} B")


if __name__ == "__main__":
    main()
