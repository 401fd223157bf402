"""trace, mirror, watch and diff on a CUDA model: what works, the watch overhead on the GPU, and its syncs.

    python benchmarks/gpu_check.py [--rounds 7] [--steps 50] [--zoo]

The overhead is timed in the watch's steady state (after the steps it details in full at its start), with the
default settings and with every step detailed (sample=1). The sync check runs steady-state steps under
``torch.cuda.set_sync_debug_mode("warn")`` and counts the host-device synchronisations PyTorch reports, with and
without a watch: a watch keeps what it measures on the GPU and reads it back 16 steps at a time, so it adds at
most one per 16 steps (plus its detailed steps' reads of CPU-side optimizer counters, none on the GPU).

--zoo also mirrors every model of tests/zoo.py on the GPU in float64, float32 (TensorFloat-32 convolutions,
PyTorch's default), float32 with TensorFloat-32 matrix products too, bfloat16, float16 and bf16 autocast, and
prints the rows whose verdict is a mismatch (a false alarm: the models are correct).

Exits 0 with a message when CUDA is not available. Each check prints "ok" or "FAILED" with the reason; the
exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 14 * 14, 64), nn.ReLU(), nn.Linear(64, 10)).cuda()
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(32, 1, 28, 28, device="cuda", generator=g)
    y = torch.randint(0, 10, (32,), device="cuda", generator=g)
    return model, x, y


def check_trace():
    model, x, y = model_and_batch()
    t = lens.trace(F.cross_entropy(model(x), y), params=model)
    s = t.summary()
    devices = {d["device"] for _, d in t.graph.nodes(data=True) if d["device"]}
    assert devices == {"cuda:0"}, devices
    return f"{s['nodes']} nodes, {s['saved_tensors']} saved tensors, {s['saved_bytes']:,} bytes, devices {devices}"


def check_mirror():
    model, x, y = model_and_batch()
    model = model.double()
    r = lens.mirror(F.cross_entropy(model(x.double()), y), params=model)
    assert r.ok, r.to_text()
    return f"{len(r.rows)} rows, all match, unmirrored: {r.unmirrored or 'none'}"


def check_watch():
    model, x, y = model_and_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with lens.watch(model, optimizer=opt, retain=["1"]) as w:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    kinds = {}
    for e in w.events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    assert len(w.steps) == 3, len(w.steps)
    assert set(w.steps[-1]["grad_norm"]) == {n for n, _ in model.named_parameters()}, w.steps[-1]["grad_norm"]
    assert kinds.get("unpack") == kinds.get("pack"), kinds  # the device threads' backward is the watching thread's
    assert kinds.get("retain") == 3, kinds
    return f"3 steps, events {kinds}"


def check_watch_identical():
    def run(watched):
        model, x, y = model_and_batch()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ctx = lens.watch(model, optimizer=opt) if watched else None
        if ctx:
            ctx.__enter__()
        try:
            for _ in range(3):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        finally:
            if ctx:
                ctx.__exit__(None, None, None)
        return [p.detach().clone() for p in model.parameters()]

    # cuDNN's default convolution backward adds with atomics (two plain runs differ): compare deterministic runs
    deterministic, benchmark = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        plain, watched = run(False), run(True)
        assert torch.equal(torch.cat([p.flatten() for p in plain]), torch.cat([p.flatten() for p in run(False)]))
        assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark
    return "parameters bit-identical after 3 SGD steps (cudnn.deterministic, as two plain runs need)"


def check_inplace_error():
    model, _, _ = model_and_batch()

    def body():
        w = torch.tensor([0.0, 1.0], device="cuda", requires_grad=True)
        a = w.exp()
        a.add_(1)
        a.sum().backward()

    texts = []
    for watched in (False, True):
        try:
            if watched:
                with lens.watch(model):
                    body()
            else:
                body()
        except RuntimeError as e:
            texts.append(str(e))
    assert len(texts) == 2 and texts[1].startswith(texts[0]), texts
    return "PyTorch's error kept under watch"


def check_diff():
    model, x, y = model_and_batch()
    a = lens.trace(F.cross_entropy(model(x), y), params=model)
    b = lens.trace(F.cross_entropy(model(x), y), params=model)
    d = lens.diff(a, b)
    assert d.is_empty, d.to_text()
    return f"two traces of the same CUDA program: empty diff ({len(d.matched)} matched)"


def zoo_check(seeds: int = 1) -> int:
    """Mirror the test zoo on CUDA (each model with `seeds` seeds: CUDA's atomics make some kernels vary from
    run to run); returns the number of (model, variant, seed) runs with a false mismatch."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from zoo import ZOO, build  # noqa: PLC0415 - the test models

    bad = 0
    for vname in ("float64", "float32", "float32+tf32mm", "bfloat16", "float16", "autocast"):
        counts = {"match": 0, "mismatch": 0, "unmirrored": 0}
        failed, unmirrored = [], set()
        for name, seed in ((n, k) for n in ZOO for k in range(seeds)):
            # float32+tf32mm: float32 with TensorFloat-32 matrix products as well as convolutions
            torch.set_float32_matmul_precision("high" if vname == "float32+tf32mm" else "highest")
            try:
                loss, params = build(name, vname.removesuffix("+tf32mm"), "cuda", seed)
                rep = lens.mirror(loss, params=params, mode="tensor")
            except Exception as e:  # noqa: BLE001 - report and go on
                failed.append(f"{name}: {type(e).__name__}: {str(e)[:120]}")
                continue
            finally:
                torch.set_float32_matmul_precision("highest")
            rows = [r for r in rep.rows if r["kind"] in ("node", "leaf")]
            mism = [r for r in rows if r["status"] == "mismatch" or r.get("e2e_status") == "mismatch"]
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            unmirrored |= {r["type"] for r in rows if r["status"] == "unmirrored"}
            if mism:
                bad += 1
                worst = max(mism, key=lambda r: r["max_rel"] or 0)
                print(f"  MISMATCH {vname:15s} {name:22s} seed {seed} {len(mism)} rows, e.g. {worst['id']} "
                      f"{worst['type']} max_rel {worst['max_rel']:.3g} max_abs {worst['max_abs']:.3g}")
        print(f"  {vname:15s} rows {counts}  not built/mirrored: {len(failed)}  unmirrored types: "
              f"{sorted(unmirrored)}")
        for f in failed:
            print(f"      {f}")
    return bad


SAMPLE = lens.Watch.__init__.__kwdefaults__["sample"]


def _training(opt_name, n_steps):
    model, _, _ = model_and_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1) if opt_name == "sgd" else torch.optim.Adam(model.parameters())
    g = torch.Generator(device="cuda").manual_seed(1)
    xs = torch.randn(n_steps, 128, 1, 28, 28, device="cuda", generator=g)
    ys = torch.randint(0, 10, (n_steps, 128), device="cuda", generator=g)

    def run(k, timed=True):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(k):
            opt.zero_grad()
            F.cross_entropy(model(xs[i % n_steps]), ys[i % n_steps]).backward()
            opt.step()
        if timed:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / k

    return model, opt, run


def overhead(rounds, n_steps):
    """Median step time, plain against watched (steady state), interleaved rounds."""
    for opt_name in ("sgd", "adam"):
        model, opt, run = _training(opt_name, n_steps)
        run(5)
        times = {"plain": [], "watch (defaults)": [], "every step detailed": []}
        for _ in range(rounds):
            times["plain"].append(run(n_steps))
            for name, kw in (("watch (defaults)", {}), ("every step detailed", {"sample": 1})):
                with lens.watch(model, optimizer=opt, **kw):
                    run(kw.get("sample", SAMPLE))  # the steps it details in full at its start
                    times[name].append(run(n_steps))
        p = statistics.median(times["plain"])
        print(f"  {opt_name:5s} plain {p * 1e3:7.3f} ms/step" + "".join(
            f"   {k} {statistics.median(v) * 1e3:7.3f} ms ({statistics.median(v) / p:.3f}x)"
            for k, v in times.items() if k != "plain"))


def count_syncs(n_steps: int = 64) -> dict:
    """Host-device synchronisations PyTorch reports (set_sync_debug_mode("warn")) in `n_steps` steady-state steps,
    plain and under a default watch."""
    import warnings

    out = {}
    for opt_name in ("sgd", "adam"):
        model, opt, run = _training(opt_name, 16)
        run(5)
        for label in ("plain", "watch"):
            ctx = lens.watch(model, optimizer=opt) if label == "watch" else None
            if ctx is not None:
                ctx.__enter__()
                run(SAMPLE + 3)  # past the detailed start, and not at a batch boundary
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        run(n_steps, timed=False)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
            out[(opt_name, label)] = sum("synchroniz" in str(c.message) for c in caught)
    return out


def check_no_sync_per_step():
    n = 64
    counts = count_syncs(n)
    for opt_name in ("sgd", "adam"):
        added = counts[(opt_name, "watch")] - counts[(opt_name, "plain")]
        assert added <= n // 16 + 1, (opt_name, counts)  # one read-back per 16 steps (+1: a detailed step)
    return ", ".join(f"{o} {l}: {c}" for (o, l), c in counts.items()) + f" syncs in {n} steady-state steps"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--zoo", action="store_true", help="also mirror tests/zoo.py on the GPU in six precisions")
    ap.add_argument("--seeds", type=int, default=1, help="with --zoo: seeds per model (default: %(default)s)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: nothing to check (run this on a machine with a GPU).")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    failed = 0
    for check in (check_trace, check_mirror, check_watch, check_watch_identical, check_inplace_error, check_diff,
                  check_no_sync_per_step):
        try:
            print(f"ok      {check.__name__[6:]:18s} {check()}")
        except Exception as e:  # report and go on: the point is to list what works
            failed += 1
            print(f"FAILED  {check.__name__[6:]:18s} {type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc(limit=3, file=sys.stdout)
    if args.zoo:
        print("the test zoo mirrored on the GPU (a mismatch here is a false alarm):")
        failed += zoo_check(args.seeds)
    print("watch overhead on the GPU (conv + MLP, batch 128, steady state, interleaved, ratio of medians):")
    try:
        overhead(args.rounds, args.steps)
    except Exception as e:
        failed += 1
        print(f"FAILED  overhead: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
