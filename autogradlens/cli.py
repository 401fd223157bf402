"""The `autogradlens` command (also `python -m autogradlens`)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

import torch


class TargetError(Exception):
    """A TARGET could not be loaded; the message says why and what to do."""


def load_target(spec: str):
    """`file.py:function` or `package.module:function` -> (tensor, params); `x.json` -> Trace."""
    from .tracing import Trace

    if spec.endswith(".json"):
        p = Path(spec)
        if not p.exists():
            raise TargetError(f"trace file not found: {spec}")
        try:
            return Trace.from_json(p.read_text())
        except ValueError as e:
            raise TargetError(f"{spec}: {e}") from None
    where, sep, func = spec.rpartition(":")
    if not sep or not where or not func:
        raise TargetError(f"bad target {spec!r}: write file.py:function, package.module:function or a .json trace")
    if where.endswith(".py"):
        path = Path(where)
        if not path.exists():
            raise TargetError(f"file not found: {where}")
        mspec = importlib.util.spec_from_file_location(f"_autogradlens_target_{path.stem}", path)
        module = importlib.util.module_from_spec(mspec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            mspec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise TargetError(f"cannot import module {where!r}: {e}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise TargetError(f"{where} has no function {func!r}")
    out = fn()
    root, params = (out if isinstance(out, tuple) and len(out) == 2 else (out, None))
    if not isinstance(root, torch.Tensor) or root.grad_fn is None:
        raise TargetError(f"{spec} must return a tensor with a graph (or (tensor, params)), "
                          f"got {type(root).__name__}" + (" without grad_fn" if isinstance(root, torch.Tensor) else ""))
    return root, params


def _trace_of(spec: str):
    from .tracing import Trace, trace

    t = load_target(spec)
    return t if isinstance(t, Trace) else trace(t[0], params=t[1])


def _cmd_trace(a) -> int:
    t = _trace_of(a.target)
    if a.output:
        print(f"wrote {t.render(a.output)}")
    else:
        print(t.to_text())
    s = t.summary()
    print(f"{s['nodes']} nodes, {s['saved_tensors']} saved tensors, {s['saved_bytes']} bytes saved", file=sys.stderr)
    return 0


def _cmd_mirror(a) -> int:
    from .mirroring import mirror

    t = load_target(a.target)
    if not isinstance(t, tuple):
        raise TargetError("mirror needs a live graph: give file.py:function or module:function, not a saved trace")
    rep = mirror(t[0], params=t[1], mode=a.mode)
    print(rep.to_text())
    if a.output:
        print(f"wrote {rep.render(a.output)}")
    return 0 if rep.ok else 1


def _cmd_diff(a) -> int:
    from .diffing import diff

    d = diff(_trace_of(a.a), _trace_of(a.b))
    if a.output:
        print(f"wrote {d.render(a.output)}")
    print(d.to_text())
    return 0


def _cmd_demo(a) -> int:
    from .demo import run_demo

    path = run_demo(out=a.out, data=a.data, epochs=a.epochs, progress=sys.stderr.isatty())
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autogradlens", description="See PyTorch's autograd graph.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="train an MLP on digits with SGD and Adam, write the HTML report")
    d.add_argument("--out", default="out", help="output folder (default: out)")
    d.add_argument("--data", default="digits", help="digits (default) or mnist:DIR with the IDX files")
    d.add_argument("--epochs", type=int, default=None, help="training epochs per optimizer")
    d.set_defaults(func=_cmd_demo)
    t = sub.add_parser("trace", help="trace TARGET (file.py:function or module:function) and print or save it")
    t.add_argument("target")
    t.add_argument("-o", "--output", help="write to FILE (.svg .png .pdf .dot .json .txt)")
    t.set_defaults(func=_cmd_trace)
    m = sub.add_parser("mirror", help="re-derive TARGET's backward with the Value mirror and compare with PyTorch")
    m.add_argument("target")
    m.add_argument("--mode", default="auto", choices=["auto", "scalar", "tensor"])
    m.add_argument("-o", "--output", help="also write the verdict-coloured graph (.svg .png .pdf .dot) or .txt")
    m.set_defaults(func=_cmd_mirror)
    d = sub.add_parser("diff", help="compare two graphs (targets or saved trace JSON files)")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("-o", "--output", help="write .html, .svg, .png, .pdf, .dot or .txt")
    d.set_defaults(func=_cmd_diff)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TargetError, FileNotFoundError, ValueError) as e:
        print(f"autogradlens: error: {e}", file=sys.stderr)
        return 2
