"""The mirror over PyTorch's own operator database (OpInfo `op_db`), as PyTorch's gradient tests call its ops.

    python benchmarks/opinfo.py                    # every op with CPU autograd, float64 and float32
    python benchmarks/opinfo.py --dtype float64    # one dtype
    python benchmarks/opinfo.py --ops sum,linalg.svd --verbose    # some ops, with every row that is not ok
    python benchmarks/opinfo.py --json out.json    # per-op results as JSON too

For every entry of ``torch.testing._internal.common_methods_invocations.op_db`` that supports autograd on the CPU
in the dtype, up to ``--samples`` (4) of its sample inputs are built as ``test_ops_gradients`` builds them
(``op.sample_inputs(device, dtype, requires_grad=True)``, called through ``op.gradcheck_wrapper``, outputs through
``output_process_fn_grad``); every floating or complex output with a ``grad_fn`` becomes a root, weighted by fixed
random numbers (complex outputs through ``view_as_real``), and ``lens.mirror`` checks the graph.

Each op gets one verdict, the worst over its samples, in this order:

- ``crash``: ``lens.mirror`` raised;
- ``rule raising``: a rule failed on a case (a row note ``rule failed: ...``), or its bound fell back to the
  relative one (``bound: ...``);
- ``mismatch``: a local or end-to-end mismatch;
- ``no rule``: a node type without a rule;
- ``unmirrored``: a node left unchecked with a reason (a sparse tensor, an in-place op on a view, ...);
- ``ok``: every op node of every sample checked and matching.

Ops none of whose samples builds a differentiable graph are listed as ``no graph`` and left out of the totals, and
so are mismatches on ops whose gradient PyTorch's own test suite expects to be wrong (``torch wrong``: an
``expectedFailure`` on ``TestBwdGradients.test_fn_grad``, e.g. ``as_strided_scatter``): there the mirror is right.
Totals: ops per verdict, % fully ok, and % of op nodes checked (over all samples; the weighting adds a few nodes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from collections import Counter

import torch

import autogradlens as lens

ORDER = ("crash", "rule raising", "mismatch", "no rule", "unmirrored", "ok")


def op_db():
    """PyTorch's OpInfo list (needs the ``expecttest`` package, in the dev extras)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.testing._internal.common_methods_invocations import op_db as db
    return db


def op_name(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for a in x:
            yield from _tensors(a)
    elif isinstance(x, dict):
        for a in x.values():
            yield from _tensors(a)


def _loss(out, seed: int):
    """Fixed random weights on every differentiable output: one scalar loss."""
    g = torch.Generator().manual_seed(seed)
    total = None
    for t in _tensors(out):
        if t.grad_fn is None or not (t.is_floating_point() or t.is_complex()) or t.layout != torch.strided:
            continue
        r = torch.view_as_real(t) if t.is_complex() else t
        w = torch.randn(r.shape, generator=g, dtype=torch.float64).to(r.dtype)
        term = (r * w).sum()
        total = term if total is None else total + term
    return total


def build(op, sample):
    """The sample as test_ops_gradients calls it: the loss, and the leaves that need a gradient by name."""
    out = op.gradcheck_wrapper(op.get_op(), sample.input, *sample.args, **sample.kwargs)
    if sample.output_process_fn_grad is not None:
        out = sample.output_process_fn_grad(out)
    leaves = [t for t in _tensors((sample.input, sample.args, sample.kwargs)) if t.requires_grad and t.is_leaf]
    return out, {f"in{i}": t for i, t in enumerate(leaves)}


def check_sample(op, sample, seed: int) -> dict:
    """One sample: {'verdict', 'nodes', 'checked', 'notes', 'bad'} or None where no graph is built."""
    try:
        out, params = build(op, sample)
        loss = _loss(out, seed)
    except Exception:  # noqa: BLE001 - PyTorch refuses the sample: not the mirror's business
        return None
    if loss is None or not loss.requires_grad:
        return None
    try:
        rep = lens.mirror(loss, params=params, mode="tensor")
    except Exception as e:  # noqa: BLE001 - the mirror must never crash: counted
        return {"verdict": "crash", "nodes": 0, "checked": 0, "notes": {},
                "bad": [f"{type(e).__name__}: {e}"], "trace": traceback.format_exc(limit=-3)}
    nodes = [r for r in rep.rows if r["kind"] == "node"]
    notes, bad, verdicts = {}, [], {"ok"}
    for r in rep.rows:
        note = r["note"] or ""
        if note.startswith(("rule failed", "bound:")):
            verdicts.add("rule raising")
            bad.append(f"{r['type']}: {note}")
        if r["status"] == "mismatch" or r.get("e2e_status") == "mismatch":
            verdicts.add("mismatch")
            bad.append(f"{r['type']} {r['kind']}: local {r['status']} {r['max_abs']:.3g} (bound {r['bound']}), "
                       f"e2e {r.get('e2e_status')} {r.get('e2e_max_abs')} (bound {r.get('e2e_bound')})")
        if r["status"] == "unmirrored":
            verdicts.add("no rule" if note == "no rule for this node type" else "unmirrored")
            notes[r["type"]] = note
    verdict = next(v for v in ORDER if v in verdicts)
    return {"verdict": verdict, "nodes": len(nodes), "checked": sum(r["status"] == "match" for r in nodes),
            "notes": notes, "bad": bad}


# Ops whose PyTorch gradient is wrong, shown by tests/test_mirror.py::test_pytorchs_own_wrong_gradients_are_caught
# (unit steps of the linear forward): as_strided_scatter gives its gradient to the overwritten places. torch 2.13's
# OpInfo marks its gradient test an expected failure; 2.14.1 dropped the mark, the gradient is still wrong.
KNOWN_WRONG = {"as_strided_scatter"}


def known_wrong(op) -> bool:
    """PyTorch's own gradient test expects this op's gradient to fail (an ``expectedFailure`` on
    TestBwdGradients.test_fn_grad), or KNOWN_WRONG lists it: its backward is known to be wrong, so a mismatch there
    is the mirror catching it."""
    import unittest
    return op_name(op) in KNOWN_WRONG or any(
        getattr(d, "cls_name", None) == "TestBwdGradients" and getattr(d, "test_name", None) == "test_fn_grad"
        and unittest.expectedFailure in getattr(d, "decorators", ()) and d.active_if and d.device_type in (None, "cpu")
        for d in op.decorators)


def differentiable(op, dtype) -> bool:
    return op.supports_autograd and dtype in op.supported_backward_dtypes("cpu")


def check_op(op, dtype, samples: int = 4) -> dict:
    """The op's verdict in `dtype` over its first `samples` sample inputs (the worst of them)."""
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        try:
            it = op.sample_inputs("cpu", dtype, requires_grad=True)
            for k, sample in enumerate(it):
                if len(results) >= samples or k >= 4 * samples:
                    break
                r = check_sample(op, sample, seed=k)
                if r is not None:
                    results.append(r)
        except Exception:  # noqa: BLE001 - the op's own sample generator failed
            pass
    if not results:
        return {"op": op_name(op), "verdict": "no graph", "nodes": 0, "checked": 0, "notes": {}, "bad": []}
    verdict = min((r["verdict"] for r in results), key=ORDER.index)
    if verdict == "mismatch" and known_wrong(op):
        verdict = "torch wrong"
    notes = {}
    for r in results:
        notes.update(r["notes"])
    return {"op": op_name(op), "verdict": verdict, "samples": len(results),
            "nodes": sum(r["nodes"] for r in results), "checked": sum(r["checked"] for r in results),
            "notes": notes, "bad": [b for r in results for b in r["bad"]][:6],
            "trace": next((r["trace"] for r in results if "trace" in r), None)}


def sweep(dtype, names=None, samples: int = 4, progress=None) -> list[dict]:
    out = []
    for op in op_db():
        if names is not None and op_name(op) not in names and op.name not in names:
            continue
        if not differentiable(op, dtype):
            continue
        out.append(check_op(op, dtype, samples))
        if progress:
            progress(out[-1])
    return out


def totals(results) -> dict:
    counted = [r for r in results if r["verdict"] not in ("no graph", "torch wrong")]
    by = Counter(r["verdict"] for r in counted)
    nodes = sum(r["nodes"] for r in counted)
    return {"ops": len(counted), "no graph": sum(r["verdict"] == "no graph" for r in results),
            "torch wrong": [r["op"] for r in results if r["verdict"] == "torch wrong"],
            **{v: by.get(v, 0) for v in ORDER},
            "ok %": 100 * by.get("ok", 0) / max(1, len(counted)),
            "nodes": nodes, "nodes checked %": 100 * sum(r["checked"] for r in counted) / max(1, nodes)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", action="append", choices=["float64", "float32"])
    ap.add_argument("--ops", help="comma-separated op names (op or op.variant)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--verbose", action="store_true", help="print every op, with what went wrong")
    ap.add_argument("--json", help="write the per-op results here")
    a = ap.parse_args(argv)
    names = set(a.ops.split(",")) if a.ops else None
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, autogradlens {lens.__version__ if hasattr(lens, '__version__') else ''}")
    everything, code = {}, 0
    for dt in a.dtype or ["float64", "float32"]:
        t0 = time.perf_counter()

        def show(r):
            if a.verbose or r["verdict"] not in ("ok", "no graph", "unmirrored"):
                extra = "; ".join(f"{k}: {v}" for k, v in r["notes"].items()) if r["verdict"] in (
                    "no rule", "unmirrored") else "; ".join(r["bad"][:2])
                print(f"  {dt:8s} {r['op']:40s} {r['verdict']:13s} {extra[:300]}", flush=True)
                if r.get("trace") and a.verbose:
                    print(r["trace"])
        res = sweep(getattr(torch, dt), names, a.samples, show)
        t = totals(res)
        everything[dt] = res
        reasons = Counter(f"{k}: {v}" for r in res if r["verdict"] == "unmirrored" for k, v in r["notes"].items())
        print(f"{dt}: {t['ops']} ops ({t['no graph']} more without a graph): {t['ok']} fully ok ({t['ok %']:.1f} %), "
              f"{t['unmirrored']} unmirrored with a reason, {t['no rule']} with no rule, {t['mismatch']} mismatch, "
              f"{t['rule raising']} rule raising, {t['crash']} crash; {t['nodes checked %']:.2f} % of "
              f"{t['nodes']} op nodes checked ({time.perf_counter() - t0:.0f} s)")
        if t["torch wrong"]:
            print(f"    mismatch where PyTorch's own gradient test expects its gradient to be wrong (not counted): "
                  f"{', '.join(t['torch wrong'])}")
        for k, n in reasons.most_common():
            print(f"    unmirrored ({n} ops): {k}")
        if t["mismatch"] or t["rule raising"] or t["crash"] or t["ok %"] < 95:
            code = 1
    if a.json:
        with open(a.json, "w") as f:
            json.dump({dt: [{k: v for k, v in r.items() if k != "trace"} for r in res]
                       for dt, res in everything.items()}, f, indent=1, default=str, allow_nan=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
