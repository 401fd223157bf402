"""Plain files: strict JSON (no NaN/Infinity tokens) and CSV cells a spreadsheet will not run.

Non-finite floats are written as the strings "nan", "inf" and "-inf" and read back as floats.
"""

from __future__ import annotations

import json
import math

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def finite(obj):
    """`obj` with every non-finite float replaced by "nan", "inf" or "-inf" (iteratively deep)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if obj != obj else ("inf" if obj > 0 else "-inf"))
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """Strict JSON text (``allow_nan=False``): non-finite floats become "nan", "inf", "-inf"."""
    return json.dumps(finite(obj), allow_nan=False, **kw)


def number(v):
    """Read back a number written by :func:`dumps` ("inf" -> inf); other values unchanged."""
    return _NONFINITE.get(v, v) if isinstance(v, str) else v


def csv_cell(v):
    """A CSV cell: numbers stay numbers; text a spreadsheet would run as a formula gets a leading quote (OWASP)."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") and v not in _NONFINITE:
        return "'" + v
    return v
