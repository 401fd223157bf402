"""The `autogradlens` command (also `python -m autogradlens`).

Exit status: 0 done; 1 `mirror` found a mismatch or `check` a line that is not right; 2 bad usage or bad input
(one line ``autogradlens: error: ...``
on stderr, never a traceback), also for `autogradlens` alone, which lists the commands; 130 interrupted (Ctrl-C);
141 the reader of the output went away (``autogradlens trace ... | head``), quietly.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from ._tracejson import read_trace
from .errors import LensError, LensValueError

COMMANDS = """\
commands (each has --help):
  demo     train an MLP on digits with SGD and Adam under watch, write an HTML report
             autogradlens demo --out out
  trace    print the autograd graph of TARGET, or save it (.svg .png .pdf .dot .json .txt)
             autogradlens trace autogradlens.examples:mlp_loss -o graph.svg
  mirror   re-derive TARGET's backward with micrograd-style Values and compare with PyTorch
             autogradlens mirror autogradlens.examples:mlp_loss
  check    grade your own gradients line by line: TARGET returns (loss, grads, params)
             autogradlens check autogradlens.examples:makemore_exercise_with_a_bug
  diff     compare two graphs (TARGETs or traces saved as .json)
             autogradlens diff a.json b.json -o diff.html

TARGET is file.py:function or package.module:function: a function without arguments that returns the loss
tensor, or (loss, params) with params an nn.Module or a dict name -> tensor (e.g. autogradlens.examples:mlp_loss).
"""
TARGET_HELP = ("file.py:function or package.module:function returning the loss (or (loss, params)), "
               "e.g. autogradlens.examples:mlp_loss or model.py:loss")
OUTPUTS = {"trace": ("svg", "png", "pdf", "dot", "gv", "json", "txt"),
           "mirror": ("svg", "png", "pdf", "dot", "gv", "txt"),
           "check": ("svg", "png", "pdf", "dot", "gv", "txt"),
           "diff": ("html", "svg", "png", "pdf", "dot", "gv", "txt")}


class TargetError(LensValueError):
    """A TARGET could not be loaded or returned the wrong thing; the message says why and what to do."""


def _describe(out) -> str:
    import torch  # here, not at the top: `autogradlens --help` starts at once

    if out is None:
        return "None"
    if isinstance(out, torch.Tensor):
        return "a tensor without grad_fn (a leaf, or computed under torch.no_grad())" if out.grad_fn is None \
            else "a tensor"
    if isinstance(out, tuple):
        return "(" + ", ".join(type(x).__name__ for x in out[:5]) + (", ..." if len(out) > 5 else "") + ")"
    return f"{type(out).__name__} {out!r:.40}"


def _params_like(p) -> bool:
    import torch

    if p is None or isinstance(p, torch.nn.Module):
        return True
    if isinstance(p, Mapping):
        return all(isinstance(v, torch.Tensor) for v in p.values())
    return isinstance(p, (list, tuple)) and all(
        isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], torch.Tensor) for x in p)


def _failed(spec: str, what: str, e: Exception) -> TargetError:
    """The user's code failed: show their traceback (without our frame), then one line."""
    tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
    traceback.print_exception(type(e), e, tb, file=sys.stderr)
    return TargetError(f"{what} {spec} raised {type(e).__name__} (traceback above): {e}")


def load_target(spec: str, raw: bool = False):
    """`file.py:function` or `package.module:function` -> (tensor, params); `x.json` -> Trace. With `raw`, what
    the function returned, as it is.

    Raises:
        TargetError: (a LensValueError) the file, module or function is missing, the function fails or
            returns something other than a tensor with a graph or ``(tensor, params)``, or the JSON is damaged.

    Example:
        >>> from autogradlens.cli import load_target
        >>> loss, params = load_target("autogradlens.examples:neuron")
        >>> loss.grad_fn.name(), sorted(params)
        ('TanhBackward0', ['b', 'w1', 'w2', 'x1', 'x2'])
    """
    if spec.endswith(".json"):
        p = Path(spec)
        if not p.is_file():
            raise TargetError(f"trace file not found: {spec}" + (" (it is a folder)" if p.is_dir() else ""))
        try:
            graph, root = read_trace(p.read_bytes())  # checked before torch starts: a damaged file fails at once
        except LensValueError as e:
            raise TargetError(f"{spec}: {e}") from None
        from .tracing import Trace

        return Trace(graph, root)
    import torch
    where, sep, func = spec.rpartition(":")
    if not sep or not where or not func:
        raise TargetError(f"bad target {spec!r}: write file.py:function, package.module:function or a .json trace "
                          "(e.g. autogradlens.examples:mlp_loss)")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise TargetError(f"file not found: {where}")
        mspec = importlib.util.spec_from_file_location(f"_autogradlens_target_{path.stem}", path)
        module = importlib.util.module_from_spec(mspec)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            mspec.loader.exec_module(module)
        except Exception as e:
            raise _failed(where, "running", e) from None
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise TargetError(f"cannot import module {where!r}: {e}") from None
        except Exception as e:
            raise _failed(where, "importing", e) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise TargetError(f"{where} has no function {func!r}")
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise TargetError(f"{spec} takes arguments {inspect.signature(fn)}; TARGET must be a function that can be "
                          "called without arguments (wrap yours in one)") from None
    except ValueError:  # no signature (a builtin): just call it
        pass
    try:
        out = fn()
    except Exception as e:
        raise _failed(spec, "calling", e) from None
    if raw:
        return out
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor) and _params_like(out[1]):
        root, params = out
    else:
        root, params = out, None
    if not isinstance(root, torch.Tensor) or root.grad_fn is None:
        raise TargetError(f"{spec} must return a tensor with a graph (the loss) or (loss, params) with params an "
                          f"nn.Module or a dict name -> tensor; it returned {_describe(out)}")
    return root, params


def _trace_of(spec: str):
    t = load_target(spec)
    from .tracing import Trace, trace

    return t if isinstance(t, Trace) else trace(t[0], params=t[1])


def _check_output(cmd: str, output):
    if output is None:
        return
    fmt = Path(output).suffix.lower().lstrip(".")
    if fmt not in OUTPUTS[cmd]:
        kinds = ", ".join("." + f for f in OUTPUTS[cmd])
        raise LensValueError(f"cannot write {output!r}: {cmd} -o writes {kinds} (the suffix picks the format)")


def _cmd_trace(a) -> int:
    _check_output("trace", a.output)
    t = _trace_of(a.target)
    if a.output:
        print(f"wrote {t.render(a.output)}")
    else:
        print(t.to_text())
    s = t.summary()
    print(f"{s['nodes']} nodes, {s['saved_tensors']} saved tensors, {s['saved_bytes']} bytes saved", file=sys.stderr)
    return 0


def _cmd_mirror(a) -> int:
    from .mirror import mirror

    _check_output("mirror", a.output)
    t = load_target(a.target)
    if not isinstance(t, tuple):
        raise TargetError("mirror needs a live graph: give file.py:function or module:function, not a saved trace")
    rep = mirror(t[0], params=t[1], mode=a.mode)
    print(rep.to_text())
    if a.output:
        print(f"wrote {rep.render(a.output)}")
    return 0 if rep.ok else 1


def _cmd_check(a) -> int:
    from .checking import check

    _check_output("check", a.output)
    if a.target.endswith(".json"):
        raise TargetError("check needs your gradients: give file.py:function or module:function returning (loss, "
                          "grads, params), not a saved trace")
    out = load_target(a.target, raw=True)
    if not (isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[1], Mapping)):
        raise TargetError(f"{a.target} must return (loss, grads) or (loss, grads, params): grads a dict name -> "
                          "gradient (or -> (tensor, gradient)), params naming the tensors; it returned "
                          f"{_describe(out)}")
    rep = check(out[0], out[1], params=out[2] if len(out) == 3 else None)
    print(rep.to_text())
    if a.output:
        print(f"wrote {rep.render(a.output)}")
    return 0 if rep.ok else 1


def _cmd_diff(a) -> int:
    _check_output("diff", a.output)
    ta, tb = _trace_of(a.a), _trace_of(a.b)
    from .diffing import diff

    d = diff(ta, tb)
    if a.output:
        print(f"wrote {d.render(a.output)}")
    print(d.to_text())
    return 0


def _cmd_demo(a) -> int:
    from .demo import run_demo

    path = run_demo(out=a.out, data=a.data, epochs=a.epochs, progress=sys.stderr.isatty(),
                    log=lambda line: print(line, flush=True))
    print(f"report: {path}")
    print(f"open {Path(path).resolve().as_uri()} in a browser")
    return 0


def _epochs(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of epochs (1 or more), got {s!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (each optimizer trains this many epochs), got {n}")
    return n


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout and shows each option's default."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in h:
            h += " (default: %(default)s)"
        return h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autogradlens", description="See PyTorch's autograd graph: trace, mirror, "
                                "watch, diff.", epilog=COMMANDS, formatter_class=_Help)
    from . import __version__
    p.add_argument("--version", action="version", version=f"autogradlens {__version__}")
    sub = p.add_subparsers(dest="cmd", title="command", metavar="{demo,trace,mirror,check,diff}", description="one of "
                           "the commands below; `autogradlens COMMAND --help` shows its options")

    def command(name, help, example, func):  # help goes to the command's own page; the list is COMMANDS
        c = sub.add_parser(name, description=help, epilog=f"example:\n  {example}", formatter_class=_Help)
        c.set_defaults(func=func)
        return c

    d = command("demo", "train an MLP on digits with SGD and Adam under watch, trace and mirror a step, write an "
                "HTML report", "autogradlens demo --out out --epochs 5", _cmd_demo)
    d.add_argument("--out", default="out", metavar="DIR", help="folder for report.html and the pictures")
    d.add_argument("--data", default="digits", help="digits (bundled with scikit-learn) or mnist:DIR (a folder with "
                   "the four MNIST IDX files)")
    d.add_argument("--epochs", type=_epochs, default=30, metavar="N", help="training epochs per optimizer (>= 1)")
    t = command("trace", "print the autograd graph of TARGET as text, or save it with -o",
                "autogradlens trace autogradlens.examples:mlp_loss -o graph.svg", _cmd_trace)
    t.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    t.add_argument("-o", "--output", metavar="FILE", help="write FILE instead: .svg .png .pdf .dot .json .txt")
    m = command("mirror", "re-derive TARGET's backward with micrograd-style Values and compare with PyTorch "
                "(exit 1 on a mismatch)", "autogradlens mirror autogradlens.examples:mlp_loss", _cmd_mirror)
    m.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    m.add_argument("--mode", default="auto", choices=["auto", "scalar", "tensor"],
                   help="scalar: one Value per element (small graphs); tensor: Values holding arrays")
    m.add_argument("-o", "--output", metavar="FILE", help="also write the verdict-coloured graph (.svg .png .pdf .dot) "
                   "or the table (.txt)")
    c = command("check", "grade your own gradients line by line against PyTorch's: the first wrong line and why "
                "(exit 1 unless all are right)",
                "autogradlens check autogradlens.examples:makemore_exercise_with_a_bug", _cmd_check)
    c.add_argument("target", metavar="TARGET", help="file.py:function or package.module:function returning (loss, "
                   "grads, params): grads maps names to your gradients, params names the tensors (as lens.check takes "
                   "them)")
    c.add_argument("-o", "--output", metavar="FILE", help="also write the status-coloured graph (.svg .png .pdf .dot) "
                   "or the table (.txt)")
    d = command("diff", "compare two graphs and list what was removed, added and changed",
                "autogradlens diff autogradlens.examples:neuron autogradlens.examples:neuron_formula -o diff.html",
                _cmd_diff)
    d.add_argument("a", metavar="A", help="a TARGET, or a trace saved with `autogradlens trace TARGET -o a.json`")
    d.add_argument("b", metavar="B", help="the graph to compare A with (a TARGET or a .json trace)")
    d.add_argument("-o", "--output", metavar="FILE", help="also write .html (both graphs and the table), .svg, .png, "
                   ".pdf, .dot or .txt")
    return p


def run() -> None:
    """The `autogradlens` program: :func:`main`, then exit without the garbage collector's last passes over torch's
    objects (about a second; the OS frees the memory)."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (see the module docstring).

    Example:
        >>> from autogradlens.cli import main
        >>> main(["trace", "no_such_module:f"])
        2
    """
    args = build_parser().parse_args(argv)
    if args.cmd is None:
        print("usage: autogradlens {demo,trace,mirror,check,diff} ... (autogradlens --help for more)\n\n" + COMMANDS,
              file=sys.stderr)
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        try:  # nothing more can reach the reader: silence the final flush as well
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except KeyboardInterrupt:
        print("autogradlens: interrupted", file=sys.stderr)
        return 130
    except (LensError, OSError) as e:
        msg = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename and e.strerror else str(e)
        print(f"autogradlens: error: {msg}", file=sys.stderr)
        return 2
