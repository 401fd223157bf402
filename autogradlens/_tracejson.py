"""Reading a trace back from JSON, its structure checked (no torch needed: a damaged file is refused at once)."""

from __future__ import annotations

import networkx as nx

from ._files import depth, loads, numbers
from .errors import LensValueError

SCHEMA = "autogradlens.trace/1"


def read_trace(s: str | bytes):
    """``Trace.to_json()`` text -> (networkx graph, root), or LensValueError naming the damaged place."""
    doc = loads(s, what="trace JSON document", max_depth=None)  # _build bounds the free-form fields
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LensValueError(f"not an autogradlens trace (expected schema {SCHEMA!r}); "
                             "write one with Trace.to_json() or `autogradlens trace TARGET -o x.json`")
    return _graph_from_doc(doc)


def _tup(x):
    return tuple(x) if isinstance(x, list) else x


class _Damaged(Exception):
    pass


_SHAPE, _INT, _STR_, _OPT_STR, _OPT_INT, _BOOL = "shape", "int", "str", "str|None", "int|None", "bool"
_NODE_KEYS = {"type": _STR_, "is_leaf": _BOOL, "param": _OPT_STR, "shape": _SHAPE, "dtype": _OPT_STR,
              "device": _OPT_STR, "saved": list, "attrs": dict, "seq": _OPT_INT, "is_root": _BOOL}
_NODE_OPTIONAL = {"outputs": list, "not_saved": list, "name": _OPT_STR, "module": _OPT_STR, "grad": "grad"}
_SLOT_KEYS = {"name": _STR_, "shape": _SHAPE, "dtype": _OPT_STR, "nbytes": _OPT_INT, "storage": _OPT_STR,
              "is_output": _BOOL, "alias": _OPT_STR, "state": _STR_}
_SLOT_OPTIONAL = {"device": _OPT_STR, "storage_nbytes": _OPT_INT, "version": _OPT_INT, "unmeasured": _OPT_STR}
_EDGE_KEYS = {"u": _STR_, "v": _STR_, "key": _INT, "input_nr": _INT, "slot": _INT}
_FIXED = {"type", "is_leaf", "param", "shape", "dtype", "device", "seq", "is_root", "saved", "outputs"}  # typed
_MAX_DEPTH = 80  # a gradient's `values` nest once per dimension (at most 64)
_NAMES = {list: "a list", dict: "an object", _STR_: "a string", _OPT_STR: "a string or null", _INT: "an integer",
          _OPT_INT: "an integer or null", _BOOL: "true or false", _SHAPE: "a list of integers or null",
          "grad": "an object, a number (a Value's gradient) or null"}


def _shape_ok(v) -> bool:
    return v is None or (type(v) is list and (not v or (set(map(type, v)) == {int} and min(v) >= 0)))


_IS = {list: lambda v: type(v) is list, dict: lambda v: type(v) is dict, _STR_: lambda v: type(v) is str,
       _OPT_STR: lambda v: v is None or type(v) is str, _INT: lambda v: type(v) is int,
       _OPT_INT: lambda v: v is None or type(v) is int, _BOOL: lambda v: type(v) is bool, _SHAPE: _shape_ok,
       "grad": lambda v: v is None or type(v) in (dict, int, float) or v in ("inf", "-inf", "nan")}


_MISSING = object()
_STATES = ("live", "freed", "stale")
_SLOT_ALL = set(_SLOT_KEYS) | set(_SLOT_OPTIONAL)
_NODE_KEYS, _NODE_OPTIONAL, _SLOT_KEYS, _SLOT_OPTIONAL, _EDGE_KEYS = (  # key -> (check, kind)
    {k: (_IS[kind], kind) for k, kind in d.items()} for d in (_NODE_KEYS, _NODE_OPTIONAL, _SLOT_KEYS,
                                                                _SLOT_OPTIONAL, _EDGE_KEYS))


def _kind(v) -> str:
    return "null" if v is None else {bool: "bool", int: "int", float: "float", str: "str", list: "list",
                                     dict: "object"}.get(type(v), type(v).__name__)


def _check(obj, where: str, required: dict, optional: dict):
    if type(obj) is not dict:
        raise _Damaged(f"{where}: expected an object, got {_kind(obj)}")
    for k, (ok, kind) in required.items():
        v = obj.get(k, _MISSING)
        if not ok(v):
            if v is _MISSING:
                raise _Damaged(f"{where}: missing key {k!r}")
            raise _Damaged(f"{where}.{k}: expected {_NAMES[kind]}, got {_kind(v)}")
    for k, (ok, kind) in optional.items():
        if k in obj and not ok(obj[k]):
            raise _Damaged(f"{where}.{k}: expected {_NAMES[kind]}, got {_kind(obj[k])}")


def _list(doc, key: str) -> list:
    if key not in doc:
        raise _Damaged(f"missing key {key!r}")
    if type(doc[key]) is not list:
        raise _Damaged(f"{key}: expected a list, got {_kind(doc[key])}")
    return doc[key]


def _graph_from_doc(doc: dict):
    try:
        return _build(doc)
    except _Damaged as e:
        raise LensValueError(f"damaged trace JSON: {e}; write traces with Trace.to_json() or "
                             "`autogradlens trace TARGET -o file.json`") from None


def _build(doc: dict):
    g = nx.MultiDiGraph()
    for i, n in enumerate(_list(doc, "nodes")):
        where = f"nodes[{i}]"
        if type(n) is not dict:
            raise _Damaged(f"{where}: expected an object, got {_kind(n)}")
        if type(n.get("id")) is not str:
            raise _Damaged(f"{where}: missing key 'id'" if "id" not in n else f"{where}.id: expected a string")
        _check(n, where, _NODE_KEYS, _NODE_OPTIONAL)
        nid = n["id"]
        if nid in g:
            raise _Damaged(f"{where}.id: {nid!r} appears twice")
        d = {k: v for k, v in n.items() if k != "id"}
        for k, v in d.items():  # free-form values (attrs, grad, keys of later versions) stay shallow
            if k not in _FIXED and type(v) in (dict, list) and v and depth(v) > _MAX_DEPTH:
                raise _Damaged(f"{where}.{k}: nested more than {_MAX_DEPTH} levels deep")
        d["shape"] = _tup(d["shape"])
        outputs = d.get("outputs", [n["shape"]] if n["shape"] is not None else [])
        for j, x in enumerate(outputs):
            if not _shape_ok(x):
                raise _Damaged(f"{where}.outputs[{j}]: expected {_NAMES[_SHAPE]}, got {_kind(x)}")
        d["outputs"] = [_tup(x) for x in outputs]
        d.setdefault("not_saved", [])
        saved = []
        for j, sl in enumerate(d["saved"]):
            _check(sl, f"{where}.saved[{j}]", _SLOT_KEYS, _SLOT_OPTIONAL)
            if sl["state"] not in _STATES:
                raise _Damaged(f"{where}.saved[{j}].state: expected one of {', '.join(_STATES)}, got {sl['state']!r}")
            if not _SLOT_ALL.issuperset(sl) and depth(sl) > _MAX_DEPTH:  # keys of later versions stay shallow
                raise _Damaged(f"{where}.saved[{j}]: nested more than {_MAX_DEPTH} levels deep")
            saved.append({**sl, "shape": _tup(sl["shape"])})
        d["saved"] = saved
        attrs = d["attrs"]
        if attrs:
            d["attrs"] = {k: numbers(v) if type(v) in (str, list) else v for k, v in attrs.items()}
        if type(d.get("grad")) is dict:
            d["grad"] = {k: numbers(v) for k, v in d["grad"].items()}
        for k in ("grad", "data"):  # a Value's number, "inf"/"nan" read back as floats
            if type(d.get(k)) is str:
                d[k] = numbers(d[k])
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
        _check(e, where, _EDGE_KEYS, {})
        d = dict(e)
        u, v, k = d.pop("u"), d.pop("v"), d.pop("key")
        for end, x in (("u", u), ("v", v)):
            if x not in g:
                raise _Damaged(f"{where}.{end}: {x!r} is not a node")
        if g.has_edge(u, v, key=k):
            raise _Damaged(f"{where}: a second edge {u!r} -> {v!r} with key {k}")
        g.add_edge(u, v, key=k, **d)
    return g, root
