"""lens.Value vs micrograd's Value on a lecture-style MLP training loop, measured in the same run.

    python benchmarks/bench_value.py

Both engines run the same loop (same data, same initial weights, same op order); the losses agree to
rounding (micrograd's set-ordered children add gradients in hash order). The ratio is micrograd time /
lens time (aim: >= 2x).
"""

from __future__ import annotations

import random
import statistics
import time

import micrograd.engine as mg

from autogradlens import Value


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


def main():
    rng = random.Random(0)
    xs = [[rng.uniform(-1, 1) for _ in range(3)] for _ in range(20)]
    ys = [rng.choice([-1.0, 1.0]) for _ in range(20)]
    params = mlp_params(0)
    t_mg, t_lens = [], []
    for _ in range(5):  # interleaved runs
        t0 = time.perf_counter()
        a = train(mg.Value, params, xs, ys)
        t_mg.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = train(Value, params, xs, ys)
        t_lens.append(time.perf_counter() - t0)
    rel = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    m, l = statistics.median(t_mg), statistics.median(t_lens)
    print("lecture-style MLP 3-16-16-1, 20 samples, 5 SGD steps, median of 5 interleaved runs")
    print(f"micrograd {m * 1e3:8.1f} ms   lens.Value {l * 1e3:8.1f} ms   speed-up x{m / l:.2f}   "
          f"losses equal to {rel:.1e} relative (final {b[-1]:.6f}; micrograd adds gradients in set order)")


if __name__ == "__main__":
    main()
