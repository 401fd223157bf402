"""Optional dependencies: one place for checks and the messages that say what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

_warned = False

INSTALL_DOT = ("install Graphviz for the better picture: `apt-get install graphviz` (Debian/Ubuntu), "
               "`brew install graphviz` (macOS) or `conda install graphviz`")


def dot_available() -> bool:
    """True when Graphviz's `dot` program is on PATH."""
    return shutil.which("dot") is not None


class DotTimeout(TimeoutError):
    """Graphviz's dot did not finish in time (it was stopped)."""


def dot_command(fmt: str) -> list[str]:
    """``dot -T<fmt>``; on Linux under ``setpriv --pdeathsig KILL`` where that exists, so that dot dies with
    the process that started it, whatever ends that process (Ctrl-C twice, ``kill``, a closed terminal)."""
    cmd = ["dot", f"-T{fmt}"]
    if sys.platform.startswith("linux") and shutil.which("setpriv"):
        cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
    return cmd


def run_dot(source: str, fmt: str, timeout: float | None = None) -> bytes:
    """Run Graphviz's dot on DOT `source` and return the picture's bytes.

    dot never outlives the call: on a timeout (:class:`DotTimeout`), Ctrl-C (also pressed again while
    stopping) or any other exception, it is killed and waited for before the exception goes on.

    Raises:
        DotTimeout: dot ran longer than `timeout` seconds.
        LensRuntimeError: dot failed (its message is included).
    """
    from .errors import LensRuntimeError

    p = subprocess.Popen(dot_command(fmt), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(source.encode("utf-8"), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DotTimeout(f"Graphviz's dot took longer than {timeout:g} s") from None
    finally:
        while p.poll() is None:  # interrupted or timed out: stop dot, even through another Ctrl-C
            try:
                p.kill()
                p.wait()
            except KeyboardInterrupt:
                continue
    if p.returncode != 0:
        raise LensRuntimeError(f"Graphviz's dot failed (exit {p.returncode}): "
                               f"{err.decode('utf-8', 'replace').strip()[:500]}")
    return out


def warn_no_dot() -> None:
    """Say once per process that the matplotlib fallback was used."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"Graphviz's `dot` was not found, so autogradlens drew the graph with matplotlib; "
                      f"{INSTALL_DOT}.", stacklevel=user_stacklevel())


def user_stacklevel() -> int:
    """The `stacklevel` that makes a warning point at the first caller outside autogradlens."""
    here, f, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(1), 1
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(here):
        f, level = f.f_back, level + 1
    return level
