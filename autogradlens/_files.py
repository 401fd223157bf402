"""Plain files: strict JSON (no NaN/Infinity tokens) and CSV cells a spreadsheet will not run.

Convention: non-finite floats are written as the strings "nan", "inf" and "-inf" and read back as floats
wherever a number is expected (:func:`number`, :func:`numbers`). Reading is guarded: a document that is not
JSON, or nested deeper than `max_depth`, is a LensValueError, never a RecursionError.

Example:
    >>> from autogradlens._files import dumps, loads, number
    >>> dumps({"ratio": float("inf"), "x": [1.5, float("nan")]})
    '{"ratio": "inf", "x": [1.5, "nan"]}'
    >>> number(loads('{"ratio": "inf"}')["ratio"])
    inf
"""

from __future__ import annotations

import json
import math
import re
import sys

from .errors import LensValueError

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def finite(obj):
    """`obj` with every non-finite float replaced by "nan", "inf" or "-inf" (dicts, lists, tuples; recursive)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if obj != obj else ("inf" if obj > 0 else "-inf"))
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """Strict JSON text (``allow_nan=False``): non-finite floats become "nan", "inf", "-inf"."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)  # fast path: nothing to replace
    except ValueError:
        return json.dumps(finite(obj), allow_nan=False, **kw)


def loads(s, *, what: str = "JSON document", max_depth: int | None = 100):
    """Parse JSON text; bad text or nesting deeper than `max_depth` -> LensValueError.

    Nesting beyond Python's recursion limit is always refused; ``max_depth=None`` skips the (linear) walk that
    checks the limit, for readers that check the nesting of their free-form fields themselves."""
    if isinstance(s, (bytes, bytearray)):
        try:
            s = s.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LensValueError(f"not a {what}: the file is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(s, str):
        raise LensValueError(f"not a {what}: expected JSON text, got {type(s).__name__}")
    if not s.strip():
        raise LensValueError(f"not a {what}: the text is empty")
    try:
        doc = json.loads(s)  # NaN/Infinity tokens (older files) are read as floats
    except json.JSONDecodeError as e:
        raise LensValueError(f"not a {what}: {e}") from None
    except RecursionError:
        raise LensValueError(f"not a {what}: nested too deeply (deeper than Python's recursion limit)") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits(), 4300)
        limit = sys.get_int_max_str_digits()
        m = re.search(rf"\d{{{limit + 1},}}", s) if limit else None
        where = "" if m is None else (f"line {s.count(chr(10), 0, m.start()) + 1} column "
                                      f"{m.start() - s.rfind(chr(10), 0, m.start())}: ")
        raise LensValueError(f"not a {what}: {where}a number of {len(m.group()) if m else 'too many'} digits "
                             f"(Python reads at most {sys.get_int_max_str_digits()}); the file is damaged") from None
    if max_depth is not None and depth(doc) > max_depth:
        raise LensValueError(f"not a {what}: nested too deeply (more than {max_depth} levels)")
    return doc


def depth(obj) -> int:
    """Nesting depth of dicts and lists (iterative)."""
    best, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = o.values()
        elif not isinstance(o, list):
            continue
        best = max(best, d)
        stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return best


def number(v):
    """Read back a number written by :func:`dumps` ("inf" -> inf); other values unchanged."""
    return _NONFINITE.get(v, v) if isinstance(v, str) else v


def numbers(obj):
    """:func:`number` applied through nested lists (e.g. a gradient's ``values``)."""
    if isinstance(obj, list):
        return [numbers(v) for v in obj]
    return number(obj)


def csv_cell(v):
    """A CSV cell: numbers stay numbers; text a spreadsheet would run as a formula gets a leading quote (OWASP)."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") and v not in _NONFINITE:
        return "'" + v
    return v
