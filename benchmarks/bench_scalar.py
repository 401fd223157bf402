"""Scalar mode at lecture scale: Karpathy's makemore part 4 network mirrored with every scalar a Value.

    python benchmarks/bench_scalar.py [--batch 32] [--repeats 3]

Prints, for makemore(batch) in float32 (embedding 10-d, block 3, hidden 64, vocab 27):
- the time of ``lens.mirror(loss, params=names, mode="scalar")`` and of ``mode="tensor"`` (median of
  interleaved runs), and the number of Values scalar mode made against ``scalar_cost``'s estimate;
- whether the two tables agree row by row (same ids, names and verdicts) and both say ok;
- the memory one scalar-mode Value costs (tracemalloc), from which ``SCALAR_LIMIT`` is sized.
Aim: under 10 s at batch 32 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc

import numpy as np

import autogradlens as lens
import autogradlens.value as value_module
from autogradlens.examples import makemore
from autogradlens.mirror import scalar


def timed(mode, batch, paused=False):
    loss, names = makemore(batch=batch)
    gc.collect()
    t0 = time.perf_counter()
    if paused:  # what the mirror's own `with running(...)` does around its node loop
        with scalar.running(0, True):
            r = lens.mirror(loss, params=names, mode=mode)
    else:
        r = lens.mirror(loss, params=names, mode=mode)
    return time.perf_counter() - t0, r


def count_values(batch) -> int:
    made, new = [0], value_module._new

    def counting(cls):
        made[0] += 1
        return new(cls)

    value_module._new = counting
    try:
        loss, names = makemore(batch=batch)
        lens.mirror(loss, params=names, mode="scalar")
    finally:
        value_module._new = new
    return made[0]


def estimate(batch) -> int:
    from autogradlens.mirror.driver import read_ops  # the mirror's own node records (internal)
    from autogradlens.tracing import traced
    loss, names = makemore(batch=batch)
    return scalar.scalar_cost(list(read_ops(*traced(loss, names)).values()))


def bytes_per_value(n=200_000) -> float:
    """A scalar-mode gradient: an object array of Values, each made by a rule (Value * float)."""
    x = np.random.default_rng(0).standard_normal(n)
    g = scalar.as_values(x)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    out = g * x  # n new Values, their floats, the new object array
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del out
    return used / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    b = args.batch

    ts, tp, tt = [], [], []
    for _ in range(args.repeats):  # interleaved
        dt, rs = timed("scalar", b)
        ts.append(dt)
        dt, rp = timed("scalar", b, paused=True)
        tp.append(dt)
        dt, rt = timed("tensor", b)
        tt.append(dt)
    made, est = count_values(b), estimate(b)
    print(f"makemore part 4 (batch {b}, float32): mirror in scalar mode, median of {args.repeats} interleaved runs")
    print(f"  scalar mode {statistics.median(ts):6.2f} s   (inside running(), collector paused: "
          f"{statistics.median(tp):.2f} s)   tensor mode {statistics.median(tt):6.2f} s   aim: scalar < 10 s")
    print(f"  Values made by scalar mode: {made:,} (scalar_cost estimated {est:,}; "
          f"SCALAR_LIMIT {scalar.SCALAR_LIMIT:,})")

    same = [(x["id"], x["name"], x["status"]) for x in rs.rows] == [(x["id"], x["name"], x["status"]) for x in rt.rows]
    print(f"  verdicts: scalar {'ok' if rs.ok else 'NOT OK'} {rs.counts()}, tensor {'ok' if rt.ok else 'NOT OK'} "
          f"{rt.counts()}; the two tables agree row by row: {same} ({len(rs.rows)} rows)")
    w = max(len(x["name"]) for x in rs.rows)
    print(f"  {'name':{w}s}  scalar (maxdiff)      tensor (maxdiff)")
    for x, y in zip(rs.rows, rt.rows):
        print(f"  {x['name']:{w}s}  {x['status']:8s} {x['max_abs']:.1e}    {y['status']:8s} {y['max_abs']:.1e}")

    per = bytes_per_value()
    print(f"memory per scalar-mode Value (tracemalloc, 200,000 made by a rule): {per:.0f} B; "
          f"SCALAR_LIMIT {scalar.SCALAR_LIMIT:,} x {per:.0f} B = {scalar.SCALAR_LIMIT * per / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
