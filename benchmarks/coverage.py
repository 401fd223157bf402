"""Mirror coverage and verdicts over the model zoo (tests/zoo.py), and mirror time vs forward+backward.

    python benchmarks/coverage.py            # every zoo model
    python benchmarks/coverage.py gpt vit    # some of them

Per model: op nodes, distinct node types, % of op nodes checked (not "unmirrored"), the verdict in each variant
(float64, float32, bfloat16, float16, bf16 autocast: "ok" or the number of mismatching rows), and the median time
of lens.mirror(mode="tensor") as a multiple of the median forward+backward time of the same model (float64).
Then the totals, and every node type left without a rule with the reason (autogradlens.mirror.table.NO_RULE).
"""

from __future__ import annotations

import os
import statistics
import sys
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from _timing import median_time  # noqa: E402
from zoo import AUTOCAST, VARIANTS, ZOO, build  # noqa: E402

import autogradlens as lens  # noqa: E402
from autogradlens.mirror.table import NO_RULE  # noqa: E402


def _fwd_bwd(name):
    loss, params = build(name, "float64")
    ps = [p for p in (params.values() if isinstance(params, dict) else params.parameters()) if p.requires_grad]
    torch.autograd.grad(loss, ps, allow_unused=True)


def _mirror(name):
    loss, params = build(name, "float64")
    lens.mirror(loss, params=params, mode="tensor")


def main(names, repeat=5):
    torch.set_num_threads(1)
    head = f"{'model':22s} {'ops':>5s} {'types':>5s} {'checked':>8s}  " + " ".join(f"{v[:8]:>8s}" for v in VARIANTS)
    print(head + f" {'mirror/(fwd+bwd)':>17s}")
    tot_ops = tot_checked = 0
    all_types, unmirrored, ratios = set(), {}, []
    for name in names:
        verdicts = []
        for v in VARIANTS:
            if v == "autocast" and name not in AUTOCAST:
                verdicts.append("-")
                continue
            loss, params = build(name, v)
            rep = lens.mirror(loss, params=params, mode="tensor")
            bad = sum(r["status"] == "mismatch" or r.get("e2e_status") == "mismatch" for r in rep.rows)
            verdicts.append("ok" if bad == 0 else f"{bad} bad")
            ops = [r for r in rep.rows if r["kind"] == "node"]
            if v in ("float64", "autocast"):  # the coverage count: every model once, plus its autocast graph
                tot_ops += len(ops)
                tot_checked += sum(r["status"] != "unmirrored" for r in ops)
                all_types |= {r["type"] for r in ops}
                for r in ops:
                    if r["status"] == "unmirrored":
                        unmirrored[r["type"]] = unmirrored.get(r["type"], 0) + 1
            if v == "float64":
                n_ops, n_types, checked = len(ops), len({r["type"] for r in ops}), \
                    sum(r["status"] != "unmirrored" for r in ops) / max(len(ops), 1)
        # interleave the two timings so machine load hits both alike
        fb, mi = [], []
        for _ in range(repeat):
            fb.append(median_time(lambda: _fwd_bwd(name), 1))
            mi.append(median_time(lambda: _mirror(name), 1))
        ratio = statistics.median(mi) / statistics.median(fb)
        ratios.append(ratio)
        print(f"{name:22s} {n_ops:5d} {n_types:5d} {100 * checked:7.1f}%  " + " ".join(f"{x:>8s}" for x in verdicts)
              + f" {ratio:16.1f}x")
    print(f"\ntotal: {tot_ops} op nodes (float64 + autocast graphs), {len(all_types)} node types, "
          f"{100 * tot_checked / max(tot_ops, 1):.2f}% checked; "
          f"mirror/(fwd+bwd) median {statistics.median(ratios):.1f}x "
          f"(range {min(ratios):.1f}-{max(ratios):.1f}x)")
    print("\nnode types without a rule:")
    for t, n in sorted(unmirrored.items()):
        print(f"  {t} ({n} nodes): {NO_RULE.get(t, 'no reason recorded')}")
    for t, why in NO_RULE.items():
        if t not in unmirrored:
            print(f"  {t} (not in the zoo): {why}")


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    main(sys.argv[1:] or list(ZOO))
