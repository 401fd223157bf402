"""Reading a trace back from JSON, its structure checked (no torch needed: a damaged file is refused at once).

The reader normalises as it checks, so that whatever it accepts can be summarised, printed and drawn: every
key the renderers read is present with the type they expect (optional keys get their defaults), integers fit in
64 bits, numbers are floats where a float is formatted, strings are short enough for Graphviz and free of
control characters (which would break DOT or a terminal), and the edges form no cycle. Anything else is a
LensValueError naming the place, e.g. ``nodes[3].saved[0]: missing key 'state'``.
"""

from __future__ import annotations

import networkx as nx

from ._files import loads, number, numbers
from .errors import LensValueError

SCHEMA = "autogradlens.trace/1"
_MAX_DEPTH = 80     # free-form values (attrs, extra keys) nest at most this deep; a gradient's `values` once a dim
_MAX_STR = 10_000   # Graphviz refuses identifiers of 16,384 characters and more
_I64 = 2**63
_STATES = ("live", "freed", "stale")
# C0 and C1 control characters (but tab and newline) and lone surrogates: DOT and terminals choke on them
_BAD_CHARS = frozenset(map(chr, [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0),
                                 *range(0xD800, 0xE000)]))


def read_trace(s: str | bytes):
    """``Trace.to_json()`` text -> (networkx graph, root), or LensValueError naming the damaged place."""
    doc = loads(s, what="trace JSON document", max_depth=None)  # _build bounds the free-form fields
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LensValueError(f"not an autogradlens trace (expected schema {SCHEMA!r}); "
                             "write one with Trace.to_json() or `autogradlens trace TARGET -o x.json`")
    try:
        return _build(doc)
    except _Damaged as e:
        raise LensValueError(f"damaged trace JSON: {e}; write traces with Trace.to_json() or "
                             "`autogradlens trace TARGET -o file.json`") from None


class _Damaged(Exception):
    pass


def _kind(v) -> str:
    return "null" if v is None else {bool: "bool", int: "int", float: "float", str: "str", list: "list",
                                     dict: "object"}.get(type(v), type(v).__name__)


def _wrong(where: str, expected: str, v) -> _Damaged:
    got = _kind(v)
    if type(v) is int:
        got = "an integer outside 64 bits" if not -_I64 <= v < _I64 else f"int {v}"
    elif type(v) is str and (len(v) > _MAX_STR or _BAD_CHARS.intersection(v)):
        got = (f"a string of {len(v):,} characters (at most {_MAX_STR:,})" if len(v) > _MAX_STR
               else "a string with control characters")
    return _Damaged(f"{where}: expected {expected}, got {got}")


# ----------------------------------------------------------------------------- value checks (normalising)

def _text_ok(s: str) -> bool:
    return len(s) <= _MAX_STR and not _BAD_CHARS.intersection(s)


def _str(v, where):
    if type(v) is str and _text_ok(v):
        return v
    raise _wrong(where, "a string", v)


def _opt_str(v, where):
    if v is None or (type(v) is str and _text_ok(v)):
        return v
    raise _wrong(where, "a string or null", v)


def _bool(v, where):
    if type(v) is bool:
        return v
    raise _wrong(where, "true or false", v)


def _int64(v, lo=-_I64):
    return type(v) is int and lo <= v < _I64


def _opt_int(v, where):
    if v is None or _int64(v):
        return v
    raise _wrong(where, "an integer or null", v)


def _nat(v, where):
    if _int64(v, 0):
        return v
    raise _wrong(where, "a non-negative integer", v)


def _opt_nat(v, where):
    return None if v is None else _nat(v, where)


def _num(v, where):
    """A number as a float: int, float, or "nan" / "inf" / "-inf" (how files write non-finite numbers)."""
    x = number(v)
    if type(x) is float or (type(x) is int and abs(x) < 2**1023):
        return float(x)
    raise _wrong(where, 'a number (or "nan", "inf", "-inf")', v)


def _opt_num(v, where):
    return None if v is None else _num(v, where)


def _shape(v, where):
    if v is None:
        return None
    if type(v) is list and len(v) <= 64 and all(_int64(x, 0) for x in v):
        return tuple(v)
    raise _wrong(where, "a list of at most 64 non-negative integers, or null", v)


def _list_of(check):
    def f(v, where):
        if type(v) is not list:
            raise _wrong(where, "a list", v)
        return [check(x, f"{where}[{i}]") for i, x in enumerate(v)]
    return f


def _free(v, where):
    """A free-form value (attrs, keys of later versions): any JSON at most _MAX_DEPTH deep whose strings are
    clean; "nan" / "inf" strings inside lists read back as floats (as written)."""
    stack = [(v, 1)]
    while stack:
        o, d = stack.pop()
        if type(o) is str:
            if not _text_ok(o):
                raise _wrong(where, "clean text", o)
            continue
        if type(o) is int and not -_I64 <= o < _I64:
            raise _wrong(where, "integers within 64 bits", o)
        if type(o) not in (dict, list):
            continue
        if d > _MAX_DEPTH:
            raise _Damaged(f"{where}: nested more than {_MAX_DEPTH} levels deep")
        if type(o) is dict:
            for k in o:
                if not _text_ok(k):
                    raise _wrong(where, "clean keys", k)
            o = o.values()
        stack.extend((x, d + 1) for x in o)
    return v


def _numbers(v, where):
    """Nested lists of numbers (a gradient's `values`), at most _MAX_DEPTH deep; non-finite strings -> floats."""
    if type(v) is not list:
        return _num(v, where)
    out: list = []
    stack = [(v, out, 1)]
    while stack:
        src, dst, d = stack.pop()
        if d > _MAX_DEPTH:
            raise _Damaged(f"{where}: nested more than {_MAX_DEPTH} levels deep")
        for x in src:
            if type(x) is list:
                sub: list = []
                dst.append(sub)
                stack.append((x, sub, d + 1))
            else:
                dst.append(_num(x, where))
    return out


def _grad(v, where):
    """A tensor node's gradient summary: null, or an object with a norm (>= 0) and optional abs_max, mean,
    values; other keys are free-form."""
    if v is None:
        return None
    if type(v) is not dict:
        raise _wrong(where, "an object with a norm, or null", v)
    out = {k: _free(x, f"{where}.{k}") for k, x in v.items() if k not in _GRAD}
    if "norm" not in v:
        raise _Damaged(f"{where}: missing key 'norm'")
    for k, check in _GRAD.items():
        if k in v:
            out[k] = check(v[k], f"{where}.{k}")
    if out["norm"] < 0:
        raise _Damaged(f"{where}.norm: a norm cannot be negative, got {out['norm']}")
    return out


_GRAD = {"norm": _num, "abs_max": _opt_num, "mean": _opt_num, "values": lambda v, w: None if v is None
         else _numbers(v, w)}


def _record(obj, where: str, keys: dict):
    """Check an object against `keys` (name -> (check, default)): a missing key gets its default (a type is
    called for a fresh one; _REQUIRED: it must be there); unknown keys are free-form and kept. Key order is kept."""
    if type(obj) is not dict:
        raise _wrong(where, "an object", obj)
    for k, (_, default) in keys.items():
        if default is _REQUIRED and k not in obj:
            raise _Damaged(f"{where}: missing key {k!r}")
    out = {k: _free(v, f"{where}.{k}") if k not in keys else keys[k][0](v, f"{where}.{k}") for k, v in obj.items()}
    for k, (_, default) in keys.items():
        if k not in out:
            out[k] = default() if isinstance(default, type) else default
    return out


_REQUIRED = object()


def _attrs(v, where):
    if type(v) is not dict:
        raise _wrong(where, "an object", v)
    _free(v, where)
    # "nan" / "inf" strings, also inside lists, read back as floats (a norm's ord=inf, clamp's max=inf)
    return {k: numbers(x) if type(x) in (str, list) else x for k, x in v.items()}


def _slot(v, where):
    s = _record(v, where, _SLOT)
    if s["state"] not in _STATES:
        raise _Damaged(f"{where}.state: expected one of {', '.join(_STATES)}, got {s['state']!r}")
    if s["storage"] is not None and s["storage_nbytes"] is None:
        raise _Damaged(f"{where}.storage_nbytes: expected the storage's size in bytes (an integer): the slot names "
                       f"storage {s['storage']!r}")
    return s


_NOT_SAVED = {"name": (_str, _REQUIRED), "reason": (_str, "")}
_SLOT = {"name": (_str, _REQUIRED), "shape": (_shape, _REQUIRED), "dtype": (_opt_str, _REQUIRED),
         "nbytes": (_opt_nat, _REQUIRED), "storage": (_opt_str, _REQUIRED), "is_output": (_bool, _REQUIRED),
         "alias": (_opt_str, _REQUIRED), "state": (_str, _REQUIRED), "device": (_opt_str, None),
         "storage_nbytes": (_opt_nat, None), "version": (_opt_int, None), "unmeasured": (_opt_str, None)}
_NODE = {"type": (_str, _REQUIRED), "is_leaf": (_bool, _REQUIRED), "param": (_opt_str, _REQUIRED),
         "shape": (_shape, _REQUIRED), "dtype": (_opt_str, _REQUIRED), "device": (_opt_str, _REQUIRED),
         "saved": (_list_of(_slot), _REQUIRED), "attrs": (_attrs, _REQUIRED),
         "seq": (_opt_int, _REQUIRED), "is_root": (_bool, _REQUIRED), "name": (_opt_str, None),
         "module": (_opt_str, None), "outputs": (_list_of(_shape), None),
         "not_saved": (_list_of(lambda v, w: _record(v, w, _NOT_SAVED)), list)}
_TENSOR_NODE = {**_NODE, "grad": (_grad, None)}
_VALUE_NODE = {**_NODE, "data": (_num, _REQUIRED), "grad": (_num, _REQUIRED), "label": (_opt_str, None)}
_EDGE = {"u": (_str, _REQUIRED), "v": (_str, _REQUIRED), "key": (_nat, _REQUIRED), "input_nr": (_nat, _REQUIRED),
         "slot": (_nat, _REQUIRED)}


def _list(doc, key: str) -> list:
    if key not in doc:
        raise _Damaged(f"missing key {key!r}")
    if type(doc[key]) is not list:
        raise _Damaged(f"{key}: expected a list, got {_kind(doc[key])}")
    return doc[key]


def _build(doc: dict):
    g = nx.MultiDiGraph()
    nodes = _list(doc, "nodes")
    values = any(type(n) is dict and "data" in n for n in nodes)  # a micrograd-style graph: every node a value
    schema = _VALUE_NODE if values else _TENSOR_NODE
    for i, n in enumerate(nodes):
        where = f"nodes[{i}]"
        if type(n) is not dict:
            raise _Damaged(f"{where}: expected an object, got {_kind(n)}")
        if "id" not in n:
            raise _Damaged(f"{where}: missing key 'id'")
        nid = _str(n["id"], f"{where}.id")
        if nid in g:
            raise _Damaged(f"{where}.id: {nid!r} appears twice")
        if values and "data" not in n:
            raise _Damaged(f"{where}: missing key 'data' (in a graph of Values every node has data and grad)")
        d = _record({k: v for k, v in n.items() if k != "id"}, where, schema)
        if d["outputs"] is None:
            d["outputs"] = [d["shape"]] if d["shape"] is not None else []
        g.add_node(nid, **d)
    root = doc.get("root")
    roots = root if type(root) is list else [root]
    if "root" not in doc or not roots:
        raise _Damaged("missing key 'root'" if "root" not in doc else "root: an empty list")
    for r in roots:
        if type(r) is not str:
            raise _Damaged(f"root: expected a node id (a string) or a list of them, got {_kind(r)}")
        if r not in g:
            raise _Damaged(f"root: {r!r} is not a node")
    for i, e in enumerate(_list(doc, "edges")):
        where = f"edges[{i}]"
        d = _record(e, where, _EDGE)
        u, v, k = d.pop("u"), d.pop("v"), d.pop("key")
        for end, x in (("u", u), ("v", v)):
            if x not in g:
                raise _Damaged(f"{where}.{end}: {x!r} is not a node")
        if g.has_edge(u, v, key=k):
            raise _Damaged(f"{where}: a second edge {u!r} -> {v!r} with key {k}")
        g.add_edge(u, v, key=k, **d)
    if not nx.is_directed_acyclic_graph(g):
        cycle = " -> ".join(repr(u) for u, _, *_ in nx.find_cycle(g))
        raise _Damaged(f"edges: a cycle ({cycle} -> back); an autograd graph has none")
    types = doc.get("module_types", {})  # module path -> class name (optional)
    if type(types) is not dict:
        raise _Damaged(f"module_types: expected an object, got {_kind(types)}")
    for k, v in types.items():
        _str(v, f"module_types[{_str(k, 'module_types (a key)')!r}]")
    if types:
        g.graph["module_types"] = dict(types)
    return g, root
