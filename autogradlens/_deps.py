"""Optional dependencies: one place for checks and the messages that say what to install."""

from __future__ import annotations

import os
import shutil
import sys
import warnings

_warned = False

INSTALL_DOT = ("install Graphviz for the better picture: `apt-get install graphviz` (Debian/Ubuntu), "
               "`brew install graphviz` (macOS) or `conda install graphviz`")


def dot_available() -> bool:
    """True when Graphviz's `dot` program is on PATH."""
    return shutil.which("dot") is not None


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
