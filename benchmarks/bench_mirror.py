"""Time `lens.mirror` (tensor mode) against one forward + backward of the same model, one thread.

    python benchmarks/bench_mirror.py                      # every model below, this checkout
    python benchmarks/bench_mirror.py --before 72408dd     # and side by side, the code of another commit
    python benchmarks/bench_mirror.py resnet18 chain100k   # some of them

Each model runs in a fresh process (one torch thread, one BLAS thread), CPU time: the median of `--repeat`
forward+backward passes (first, in the fresh process's state) and of `--runs` mirrors; the ratio
mirror / (forward+backward) is what the issue's targets are about (ResNet-18 and GPT-2 at <= 5x, the
100,000-node chain under 5 s). `--rounds` repeats the pair of processes (this checkout, then `--before`), and
the table shows the range over rounds. The columns `capture` and `trace` are the parts of the mirror spent in
PyTorch's own backward pass with the gradients converted to numpy (autogradlens.capture) and in reading the
graph (lens.trace's walk). `--breakdown` adds, per model, where the rest goes (rules on values, on magnitudes,
the mirror's own float32 products, checks and carried bounds, saved tensors converted, the kernel's time zeroing
fresh memory), in seconds and in forward+backwards.

Models: the small ones from before (mlp, cnn, gpt block, makemore), torchvision's ResNet-18 (batch 2 at
224x224, training mode), a GPT-2 in transformers' layout (4 layers, 256 wide, 2 x 64 tokens; `gpt2` with GPT-2's
50,257-token vocabulary, `gpt2-v1k` with 1,024 tokens, where the language-model head no longer dominates) and a
chain of 100,000 multiplications (benchmarks/_models.py).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["mlp", "cnn", "gpt", "makemore", "resnet18", "gpt2", "gpt2-v1k", "chain100k"]


def build(name):
    """(loss function or None, params, a ready loss for the mirror when there is no forward to time)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    sys.path.insert(0, HERE)
    from _models import gpt2, resnet18
    if name == "mlp":
        m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        return lambda: F.cross_entropy(m(torch.randn(64, 64)), torch.randint(0, 10, (64,))), m
    if name == "cnn":
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10))
        return lambda: F.cross_entropy(m(torch.randn(8, 3, 8, 8)), torch.randint(0, 10, (8,))), m
    if name == "gpt":
        return _small_gpt()
    if name == "makemore":
        from autogradlens.examples import makemore
        return lambda: makemore()[0], None
    if name == "resnet18":
        return resnet18()
    if name == "gpt2":
        return gpt2()
    if name == "gpt2-v1k":
        return gpt2(vocab=1024)
    if name == "chain100k":
        x = torch.randn(2, requires_grad=True)

        def chain():
            y = x
            for _ in range(100_000):
                y = y * 1.0001
            return y.sum()
        return chain, {"x": x}
    raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def _small_gpt():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    d, vocab = 32, 50
    emb, ln1, ln2, lnf = nn.Embedding(vocab, d), nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
    att, mlp_, head = nn.MultiheadAttention(d, 4, batch_first=True), \
        nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)), nn.Linear(d, vocab)
    m = nn.ModuleDict({"emb": emb, "ln1": ln1, "ln2": ln2, "lnf": lnf, "att": att, "mlp": mlp_, "head": head})

    def loss():
        idx = torch.randint(0, vocab, (4, 16))
        x = emb(idx)
        h = ln1(x)
        x = x + att(h, h, h, need_weights=False)[0]
        x = x + mlp_(ln2(x))
        return F.cross_entropy(head(lnf(x)).view(-1, vocab), idx.view(-1))
    return loss, m


KEEP = []


# --breakdown: where a mirror's CPU time goes. Each category times the outermost call of its functions (a nested
# call of another category counts where it was called from), so the parts add up; "kernel" is the system time of the
# process (page faults: the kernel zeroing the fresh memory of big arrays), counted apart from the user time.
PARTS = {
    "read graph": [("mirror_pkg", "traced"), ("mirror_pkg", "read_ops")],
    "PyTorch's backward": [("mirror_pkg", "capture")],
    "rules on values": [("driver", "run_rule")],
    "rules on magnitudes": [("driver.Step", "_bound")],
    "mirror's own (float32)": [("driver.Step", "_mine32")],
    "checks and carried bounds": [("driver.Step", "_incoming"), ("driver.Step", "_out"),
                                  ("driver.Step", "_differences"), ("verdicts", "_compare"), ("driver", "_bound_out"),
                                  ("driver.Flow", "__add__")],
    "saved tensors to arrays": [("driver._Saved", "view")],
    "rows and leaves": [("mirror_pkg", "verdict_rows")],
}


def homes() -> dict:
    """Where the names of PARTS live."""
    import autogradlens.mirror as mirror_pkg
    from autogradlens.mirror import driver, verdicts
    return {"mirror_pkg": mirror_pkg, "driver": driver, "verdicts": verdicts, "driver.Step": driver.Step,
            "driver.Flow": driver.Flow, "driver._Saved": driver._Saved}


def _instrument():
    """Wraps the functions of PARTS with CPU timers (user time); returns the dict they add to."""
    spent = dict.fromkeys(PARTS, 0.0)
    depth = [0]
    where = homes()

    def user():
        return resource.getrusage(resource.RUSAGE_SELF).ru_utime

    for part, names in PARTS.items():
        for home, name in names:
            obj = where[home]
            orig = getattr(obj, name)

            def timed(*a, _orig=orig, _part=part, **k):
                if depth[0]:
                    return _orig(*a, **k)
                depth[0] += 1
                t0 = user()
                try:
                    return _orig(*a, **k)
                finally:
                    spent[_part] += user() - t0
                    depth[0] -= 1
            setattr(obj, name, timed)  # (for driver.run_rule: the module global Step calls)
    return spent


def child(name: str, repeat: int, runs: int, breakdown: bool = False) -> dict:
    """Runs in a fresh process: fwd+bwd and mirror times of one model (CPU seconds)."""
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import autogradlens as lens
    import autogradlens.mirror as mirror_pkg
    spent = _instrument() if breakdown else None
    parts = {"capture": 0.0, "traced": 0.0}
    for part in parts:  # the mirror package calls these by the names it imported: time them there
        orig = getattr(mirror_pkg, part)

        def timed(*a, _orig=orig, _part=part, **k):
            t0 = time.process_time()
            try:
                return _orig(*a, **k)
            finally:
                parts[_part] += time.process_time() - t0
        setattr(mirror_pkg, part, timed)
    f, params = build(name)
    fb, mir, cap, tra = [], [], [], []
    if name != "chain100k":
        f().backward()  # warm up (allocator, lazy imports)
    w = torch.ones(3, requires_grad=True)
    lens.mirror((w * 2).sum(), mode="tensor")  # the imports PyTorch and the mirror make on a first call
    # forward+backward first, in the state a fresh process is in: a mirror leaves the allocator warm (the old
    # code's big frees made a later GPT-2 forward+backward a quarter faster), which would flatter its ratio
    for _ in range(repeat if name != "chain100k" else 0):
        t0 = time.process_time()
        f().backward()
        fb.append(time.process_time() - t0)
    split = []
    for _ in range(runs):
        loss = f()
        for p in parts:
            parts[p] = 0.0
        if spent is not None:
            spent.update(dict.fromkeys(spent, 0.0))
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.process_time()
        rep = lens.mirror(loss, params=params, mode="tensor")
        mir.append(time.process_time() - t0)
        if spent is not None:
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            split.append({**spent, "kernel": r1.ru_stime - r0.ru_stime, "total": mir[-1]})
        cap.append(parts["capture"])
        tra.append(parts["traced"])
        assert rep.ok, rep.to_text()
        if name == "chain100k":
            KEEP.append(loss)  # freeing a 100k-deep graph can overflow PyTorch's C stack; the process exits instead
        del loss, rep
    med = statistics.median
    out = {"fb": med(fb) if fb else None, "mirror": med(mir), "capture": med(cap), "trace": med(tra)}
    if split:  # the run with the median total
        out["split"] = sorted(split, key=lambda x: x["total"])[len(split) // 2]
    return out


def run_child(name, root, repeat, runs, breakdown=False) -> dict:
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, "--repeat", str(repeat),
                          "--runs", str(runs)] + ["--breakdown"] * breakdown, env=env, capture_output=True,
                         text=True, check=False, cwd=HERE)
    if out.returncode:
        raise SystemExit(f"{name} in {root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkout(rev: str) -> str:
    """The tree of commit `rev` in a temporary folder (git archive)."""
    d = tempfile.mkdtemp(prefix="bench-mirror-")
    atexit.register(shutil.rmtree, d, True)
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, capture_output=True, text=True,
                         check=True).stdout.strip()
    tar = subprocess.run(["git", "archive", rev], cwd=top, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", d], input=tar, check=True)
    return d


def _span(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    lo, hi = min(xs), max(xs)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--before", help="a git revision to run side by side (the 'before' column)")
    ap.add_argument("--repeat", type=int, default=7, help="forward+backward passes per process")
    ap.add_argument("--runs", type=int, default=3, help="mirrors per process")
    ap.add_argument("--rounds", type=int, default=1, help="processes per checkout, interleaved")
    ap.add_argument("--breakdown", action="store_true",
                    help="also print where the mirror's time goes (this checkout; the timers add a little)")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.repeat, a.runs, a.breakdown)), flush=True)
        os._exit(0)  # PyTorch 2.13 can overflow the C stack freeing a 100k-deep graph: leave without freeing
    roots = {"now": os.path.dirname(HERE)}
    if a.before:
        roots["before"] = checkout(a.before)
    print(f"{'model':10s} {'':7s} {'fwd+bwd ms':>11s} {'mirror s':>12s} {'capture s':>10s} {'trace s':>9s} "
          f"{'ratio':>10s}", flush=True)
    for name in a.models:
        res = {k: [] for k in roots}
        for _ in range(a.rounds):
            for k, root in roots.items():
                runs = 1 if name == "chain100k" else a.runs  # (the same for both sides: a first, cold mirror is slower)
                res[k].append(run_child(name, root, a.repeat, runs, a.breakdown and k == "now"))
        for k in roots:
            rs = res[k]
            ratio = [r["mirror"] / r["fb"] for r in rs if r["fb"]]
            print(f"{name:10s} {k:7s} {_span([r['fb'] and r['fb'] * 1e3 for r in rs], '{:.1f}'):>11s} "
                  f"{_span([r['mirror'] for r in rs], '{:.2f}'):>12s} "
                  f"{_span([r['capture'] for r in rs], '{:.2f}'):>10s} "
                  f"{_span([r['trace'] for r in rs], '{:.2f}'):>9s} {_span(ratio, '{:.1f}x'):>10s}", flush=True)
        if a.breakdown:
            _print_split(name, res["now"])


def _print_split(name, rs):
    """The breakdown of each round's median mirror: seconds and times the forward+backward."""
    for r in rs:
        sp, fb = r["split"], r["fb"]
        sp["other"] = sp["total"] - sp["kernel"] - sum(sp[p] for p in PARTS)
        unit, k = ("s", 1.0) if sp["total"] >= 1 else ("ms", 1e3)
        print(f"  {name}: mirror {sp['total'] * k:.{2 if unit == 's' else 1}f} {unit} = " + ", ".join(
            f"{p} {sp[p] * k:.{2 if unit == 's' else 1}f}" + (f" ({sp[p] / fb:.1f}x)" if fb else "")
            for p in [*PARTS, "kernel", "other"] if sp[p] >= 0.01 * sp["total"]), flush=True)


if __name__ == "__main__":
    main()
