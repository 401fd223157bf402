"""One error hierarchy on every public entry: each refusal is a LensError *and* the matching built-in, with a
whole message that says what to do; damaged trace files name the problem."""

import builtins
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import autogradlens as lens
from autogradlens import cli, data, training
from autogradlens.errors import LensError, LensFileNotFoundError, LensRuntimeError, LensTypeError, LensValueError
from autogradlens.examples import MLP

BUILTIN = {LensTypeError: TypeError, LensValueError: ValueError, LensRuntimeError: RuntimeError,
           LensFileNotFoundError: FileNotFoundError}


def whole(msg: str) -> bool:
    """A message is whole: brackets balance (a cut one reads "...inplace operation: [torch)") and it does not
    stop mid-word after a separator."""
    return (msg.count("(") == msg.count(")") and msg.count("[") == msg.count("]")
            and not msg.rstrip().endswith((",", ":", "(", "[", " a", " the")))


def refuses(fn, cls, match=None):
    """`fn()` raises `cls` (a Lens error), caught as the built-in too; returns the message."""
    with pytest.raises(BUILTIN[cls]) as ei:
        fn()
    e = ei.value
    assert isinstance(e, cls) and isinstance(e, LensError), f"{type(e).__mro__} is not a {cls.__name__}: {e}"
    msg = str(e)
    assert whole(msg), msg
    if match:
        assert re.search(match, msg), msg
    return msg


def test_hierarchy_and_export():
    assert lens.LensError is LensError and "LensError" in lens.__all__
    for cls, builtin in BUILTIN.items():
        assert issubclass(cls, LensError) and issubclass(cls, builtin)
    assert not issubclass(LensError, (TypeError, ValueError, RuntimeError))


def net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return m, m(torch.randn(5, 3)).pow(2).mean()


# ----------------------------------------------------------------------------- trace

def test_trace_refusals():
    m, loss = net()
    leaf = torch.randn(2, requires_grad=True)
    refuses(lambda: lens.trace(5), LensTypeError, "torch.Tensor")
    refuses(lambda: lens.trace(leaf), LensValueError, "leaf")
    refuses(lambda: lens.trace(torch.randn(2).sum()), LensValueError, "does not require grad")
    refuses(lambda: lens.trace([]), LensValueError, "empty")
    refuses(lambda: lens.trace(loss, params=5), LensTypeError, "nn.Module")
    refuses(lambda: lens.trace(loss, params=[("w", 1.0)]), LensTypeError, "tensor")


def test_trace_two_tensors_under_one_name():
    a, b = torch.randn(2, requires_grad=True), torch.randn(2, requires_grad=True)
    refuses(lambda: lens.trace((a * b).sum(), params=[("w", a), ("w", b)]), LensValueError, "'w'")


def test_trace_render_bad_suffix(tmp_path):
    _, loss = net()
    refuses(lambda: lens.trace(loss).render(tmp_path / "graph.xyz"), LensValueError, r"\.svg")


# ----------------------------------------------------------------------------- Trace.from_json

def doc():
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    return json.loads(lens.trace((x * w).tanh().sum(), params={"w": w}).to_json())


def damaged(edit):
    d = doc()
    edit(d)
    return json.dumps(d)


def _deep(n):
    return '{"schema": "autogradlens.trace/1", "root": "A", "nodes": ' + "[" * n + "]" * n + ', "edges": []}'


DAMAGED = {
    "not JSON": ("{nope", "not a trace JSON document"),
    "empty file": ("", "empty"),
    "binary garbage": (bytes(range(256)) * 4, "not UTF-8"),
    "other JSON": ('{"a": 1}', "not an autogradlens trace"),
    "a list": ("[1, 2]", "not an autogradlens trace"),
    "missing nodes": (lambda d: d.pop("nodes"), "missing key 'nodes'"),
    "nodes: 5": (lambda d: d.update(nodes=5), r"nodes: expected a list, got int"),
    "node not an object": (lambda d: d["nodes"].__setitem__(1, "x"), r"nodes\[1\]: expected an object, got str"),
    "node without id": (lambda d: d["nodes"][0].pop("id"), r"nodes\[0\]: missing key 'id'"),
    "node id a number": (lambda d: d["nodes"][0].update(id=7), r"nodes\[0\]\.id: expected a string"),
    "duplicate id": (lambda d: d["nodes"][1].update(id=d["nodes"][0]["id"]), "appears twice"),
    "node without type": (lambda d: d["nodes"][2].pop("type"), r"nodes\[2\]: missing key 'type'"),
    "shape not a list": (lambda d: d["nodes"][0].update(shape="3x4"),
                         r"nodes\[0\]\.shape: expected a list of at most 64 non-negative int"),
    "negative size": (lambda d: d["nodes"][0].update(shape=[-1]), r"nodes\[0\]\.shape"),
    "saved not a list": (lambda d: d["nodes"][0].update(saved={}), r"nodes\[0\]\.saved: expected a list"),
    "slot without state": (lambda d: next(n for n in d["nodes"] if n["saved"])["saved"][0].pop("state"),
                           r"nodes\[\d+\]\.saved\[0\]: missing key 'state'"),
    "unknown state": (lambda d: next(n for n in d["nodes"] if n["saved"])["saved"][0].update(state="gone"),
                      r"saved\[0\]\.state: expected one of live, freed, stale, got 'gone'"),
    "attrs a list": (lambda d: d["nodes"][0].update(attrs=[]), r"nodes\[0\]\.attrs: expected an object"),
    "seq a string": (lambda d: d["nodes"][0].update(seq="1"), r"nodes\[0\]\.seq: expected an integer or null"),
    "is_leaf 0": (lambda d: d["nodes"][0].update(is_leaf=0), r"nodes\[0\]\.is_leaf: expected true or false"),
    "dangling root": (lambda d: d.update(root="MulBackward0:99"), r"root: 'MulBackward0:99' is not a node"),
    "missing root": (lambda d: d.pop("root"), "missing key 'root'"),
    "root a number": (lambda d: d.update(root=3), "root: expected a node id"),
    "empty root list": (lambda d: d.update(root=[]), "root: an empty list"),
    "dangling edge": (lambda d: d["edges"][0].update(v="Nope:0"), r"edges\[0\]\.v: 'Nope:0' is not a node"),
    "dangling edge start": (lambda d: d["edges"][1].update(u="Nope:1"), r"edges\[1\]\.u: 'Nope:1' is not a node"),
    "edge without v": (lambda d: d["edges"][0].pop("v"), r"edges\[0\]: missing key 'v'"),
    "edge key a string": (lambda d: d["edges"][0].update(key="0"), r"edges\[0\]\.key: expected a non-negative integer"),
    "edges: null": (lambda d: d.update(edges=None), r"edges: expected a list, got null"),
    "duplicate edge": (lambda d: d["edges"].append(dict(d["edges"][0])), "a second edge"),
    "deep nesting (100,000)": (_deep(100_000), "nested too deeply"),
    "deep nesting (500)": (_deep(500), r"nodes\[0\]: expected an object, got list"),
    "deep attrs": (lambda d: d["nodes"][0]["attrs"].update(x=json.loads("[" * 300 + "]" * 300)),
                   r"nodes\[0\]\.attrs: nested more than 80 levels deep"),
    "deep slot extra": (lambda d: next(n for n in d["nodes"] if n["saved"])["saved"][0].update(
        x=json.loads("[" * 300 + "]" * 300)), r"saved\[0\]\.x: nested more than 80 levels deep"),
    "name a number": (lambda d: d["nodes"][0].update(name=5), r"nodes\[0\]\.name: expected a string or null"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_from_json_names_the_damage(case):
    text, msg = DAMAGED[case]
    if callable(text):
        text = damaged(text)
    refuses(lambda: lens.Trace.from_json(text), LensValueError, msg)


def test_from_json_reads_back_nonfinite_numbers_and_writes_strict_json():
    x = torch.randn(3, requires_grad=True)
    t = lens.trace(torch.linalg.vector_norm(x.clamp(max=math.inf), ord=math.inf) * x.pow(math.nan).sum())
    text = t.to_json()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda tok: pytest.fail(f"{tok} in strict JSON"))
    back = lens.Trace.from_json(text)
    attrs = {back.graph.nodes[n]["type"]: back.graph.nodes[n]["attrs"] for n in back.graph}
    assert attrs["LinalgVectorNormBackward0"]["ord"] == math.inf
    assert attrs["ClampBackward1"]["max"] == math.inf and math.isnan(attrs["PowBackward0"]["exponent"])
    assert back.to_json() == text


def test_from_json_is_lenient_where_it_can_be():
    d = doc()
    for n in d["nodes"]:
        n.pop("outputs"), n.pop("not_saved")
        n["extra"] = {"kept": True}
    back = lens.Trace.from_json(json.dumps(d).encode())
    n0 = back.graph.nodes[d["nodes"][0]["id"]]
    assert n0["outputs"] == [n0["shape"]] and n0["not_saved"] == [] and n0["extra"] == {"kept": True}
    assert "TanhBackward0:0" in back.to_text()


def _paths(o, p=()):
    yield p
    children = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
    for k, v in children:
        yield from _paths(v, p + (k,))


def _set(o, path, v):
    for k in path[:-1]:
        o = o[k]
    if v is _DELETE:
        del o[path[-1]]
    else:
        o[path[-1]] = v


_DELETE = object()
# what a damaged or hostile file may hold where a trace has something else
HOSTILE = [_DELETE, None, True, -1, 2**64, 10**400, 1.5, "nan", "", "x\x00y", "\x1b[2J", "\ud800", "y" * 20_000,
           [], {}, [-1], ["a"], {"norm": "x"}]


def _usable(t):
    """Everything a user does with a Trace read from a file."""
    t.summary(), repr(t), t.to_text(), t.to_text(show_attrs=True), t.to_dot(), t.to_dot(show_attrs=True, grads=True)
    lens.diff(t, t).to_text()
    assert lens.Trace.from_json(t.to_json()).to_json() == t.to_json()


def _hostile_docs():
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    a, b = lens.Value(2.0, label="a"), lens.Value(-3.0)
    c = (a * b).tanh()
    c.backward()
    return [lens.trace((x * w).tanh().sum(), params={"w": w}, grads=True).to_json(), lens.trace(c).to_json()]


@pytest.mark.parametrize("doc", [0, 1], ids=["tensor graph with grads", "Value graph"])
def test_a_hostile_value_anywhere_is_refused_or_the_trace_works(doc):
    """Every key of a trace replaced by every hostile value (or removed): from_json refuses it with a
    LensValueError naming the place, or what it accepts can be summarised, printed, drawn and diffed."""
    base = json.loads(_hostile_docs()[doc])
    accepted = refused = 0
    for path in list(_paths(base))[1:]:
        for v in HOSTILE:
            d = json.loads(json.dumps(base))
            _set(d, path, v)
            try:
                t = lens.Trace.from_json(json.dumps(d))
            except LensValueError as e:  # names the place: the node or edge edited, or what now dangles
                place = f"{path[0]}[{path[1]}]" if len(path) > 1 and path[0] != "root" else str(path[0])
                assert (place in str(e) or "is not a node" in str(e) or "cycle" in str(e)
                        or path[0] == "schema" and "not an autogradlens trace" in str(e)), (path, str(e))
                refused += 1
                continue
            _usable(t)
            accepted += 1
    assert accepted > 100 and refused > 1000  # both happen (free-form attrs take anything clean)


def test_random_byte_flips_are_refused_or_the_trace_works(tmp_path):
    import random

    rng = random.Random(0)
    docs = [s.encode() for s in _hostile_docs()]
    accepted = 0
    for i in range(400):
        b = bytearray(docs[i % 2])
        for _ in range(rng.choice((1, 2, 3))):
            b[rng.randrange(len(b))] = rng.choice((rng.randrange(256), *b'0123456789-."{}[],:ntfe '))
        try:
            t = lens.Trace.from_json(bytes(b))
        except LensValueError:
            continue
        _usable(t)
        if accepted % 40 == 0:
            t.render(tmp_path / "t.svg")
        accepted += 1
    assert accepted > 20


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["nodes"][0].update(data=None), r"nodes\[0\]\.data: expected a number"),
    (lambda d: d["nodes"][1].pop("grad"), r"nodes\[1\]: missing key 'grad'"),
    (lambda d: d["nodes"][2].pop("data"), r"nodes\[2\]: missing key 'data' \(in a graph of Values"),
    (lambda d: d["nodes"][0].update(label="\x1b[2J"), r"nodes\[0\]\.label: expected a string or null, got a string "
                                                      r"with control characters"),
    (lambda d: d["nodes"][0].update(grad=10**400), r"nodes\[0\]\.grad: expected a number"),
])
def test_a_damaged_value_graph_names_the_place(edit, msg):
    d = json.loads(_hostile_docs()[1])
    edit(d)
    refuses(lambda: lens.Trace.from_json(json.dumps(d)), LensValueError, msg)


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["nodes"][0].update(grad={}), r"nodes\[0\]\.grad: missing key 'norm'"),
    (lambda d: d["nodes"][0].update(grad={"norm": -1}), r"nodes\[0\]\.grad\.norm: a norm cannot be negative"),
    (lambda d: d["nodes"][0]["grad"].update(values=[["x"]]), r"nodes\[0\]\.grad\.values: expected a number"),
    (lambda d: d["edges"][0].update(input_nr=2**64), r"edges\[0\]\.input_nr: expected a non-negative integer, "
                                                     r"got an integer outside 64 bits"),
    (lambda d: next(n for n in d["nodes"] if n["saved"])["saved"][0].pop("storage_nbytes"),
     r"saved\[0\]\.storage_nbytes: expected the storage's size"),
    (lambda d: d["nodes"][1].update(id="y" * 20_000), r"nodes\[1\]\.id: expected a string, got a string of 20,000 "),
    (lambda d: d["edges"].append({"u": d["edges"][-1]["v"], "v": d["root"], "key": 9, "input_nr": 0, "slot": 9}),
     r"edges: a cycle .* an autograd graph has none"),
    ('{"schema": "autogradlens.trace/1", "root": "A",\n "nodes": [' + "9" * 5000 + '], "edges": []}',
     r"line 2 column 12: a number of 5000 digits \(Python reads at most 4300\)"),
])
def test_a_damaged_tensor_trace_names_the_place(edit, msg):
    if callable(edit):
        d = json.loads(_hostile_docs()[0])
        edit(d)
        edit = json.dumps(d)
    refuses(lambda: lens.Trace.from_json(edit), LensValueError, msg)


def test_the_cli_prints_one_error_line_for_any_damaged_trace(tmp_path, capsys):
    d = json.loads(_hostile_docs()[0])
    cases = {"grad.json": lambda x: x["nodes"][0].update(grad={"norm": None}),
             "nbytes.json": lambda x: next(n for n in x["nodes"] if n["saved"])["saved"][0].pop("storage_nbytes"),
             "cycle.json": lambda x: x["edges"].append({"u": x["edges"][-1]["v"], "v": x["root"], "key": 9,
                                                        "input_nr": 0, "slot": 9})}
    for name, edit in cases.items():
        x = json.loads(json.dumps(d))
        edit(x)
        (tmp_path / name).write_text(json.dumps(x))
    (tmp_path / "digits.json").write_text('{"schema": "autogradlens.trace/1", "root": ' + "7" * 5000 + "}")
    for name in [*cases, "digits.json"]:
        for argv in (["trace", str(tmp_path / name)], ["diff", str(tmp_path / name), str(tmp_path / name)]):
            assert cli.main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("autogradlens: error: ") and "Traceback" not in err, err


# ----------------------------------------------------------------------------- mirror, watch, diff, Value

def test_mirror_refusals():
    _, loss = net()
    refuses(lambda: lens.mirror(loss, mode="fast"), LensValueError, "'auto', 'scalar' or 'tensor'")
    refuses(lambda: lens.mirror(5), LensTypeError)
    loss.backward()
    refuses(lambda: lens.mirror(loss), LensRuntimeError, "backward")


def test_mirror_in_place_change_message_is_whole():
    x = torch.randn(3, requires_grad=True)
    y = x.exp()
    z = (y * 2).sum()
    y.add_(1)
    msg = refuses(lambda: lens.mirror(z), LensRuntimeError, "changed in place")
    assert "expected version 0" in msg and "[torch)" not in msg


def test_watch_refusals(tmp_path):
    m, _ = net()
    refuses(lambda: lens.watch(5), LensTypeError, "nn.Module")
    refuses(lambda: lens.watch(m, optimizer=5), LensTypeError, "Optimizer")
    refuses(lambda: lens.watch(m, retain=5), LensTypeError, "retain")
    refuses(lambda: lens.watch(m, retain=["nope"]), LensValueError, "nope")
    w = lens.watch(m)
    with w:
        refuses(lambda: lens.watch(m).__enter__(), LensRuntimeError, "nested")
        m(torch.randn(2, 3)).sum().backward()
    refuses(lambda: w.__enter__(), LensRuntimeError, "already run")
    refuses(lambda: w.save(tmp_path / "events.xlsx"), LensValueError, r"\.csv")


def test_diff_refusals():
    refuses(lambda: lens.diff(1, 2), LensTypeError, "Trace")
    t = lens.trace(torch.randn(2, requires_grad=True).exp().sum())
    refuses(lambda: lens.diff(t, "b.json"), LensTypeError, "diff\\(b=")


def test_diff_of_a_leaf_tensor_is_refused_by_trace():
    refuses(lambda: lens.diff(torch.randn(2, requires_grad=True), torch.randn(2)), LensValueError)


def test_value_refusals():
    refuses(lambda: lens.Value(2.0) ** lens.Value(3.0), LensTypeError, "exponent")
    refuses(lambda: 2 ** lens.Value(3.0), LensTypeError)


def test_report_and_diff_render_bad_suffix(tmp_path):
    m, loss = net()
    refuses(lambda: lens.mirror(loss, params=m).render(tmp_path / "r.xyz"), LensValueError)
    refuses(lambda: lens.diff(lens.trace(loss), lens.trace(loss)).render(tmp_path / "d.xyz"), LensValueError)


# ----------------------------------------------------------------------------- data, training, examples, demo

def test_data_refusals(tmp_path):
    for bad in (1.5, 0, 0.0, 1, -0.5, 1e-9, 0.99999):
        refuses(lambda bad=bad: data.digits(test_size=bad), LensValueError, "test_size")
    refuses(lambda: data.digits(test_size="0.2"), LensTypeError, "test_size")
    refuses(lambda: data.digits(seed=-1), LensValueError, "seed")
    refuses(lambda: data.mnist(tmp_path / "nope"), LensFileNotFoundError, "MNIST folder not found")
    refuses(lambda: data.mnist(tmp_path), LensFileNotFoundError, "train-images-idx3-ubyte")
    refuses(lambda: data.mnist(tmp_path, limit=0), LensValueError, "limit")
    (tmp_path / "x.idx").write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    refuses(lambda: data.read_idx(tmp_path / "x.idx"), LensValueError, "wrong magic number")


def test_training_refusals():
    d = data.digits()
    m = MLP((64, 8, 10))
    fit = training.fit
    refuses(lambda: fit(m, d, batch_size=0, progress=False), LensValueError, "batch_size must be at least 1")
    refuses(lambda: fit(m, d, epochs=0, progress=False), LensValueError, "epochs must be at least 1")
    refuses(lambda: fit(m, d, epochs=1.5, progress=False), LensTypeError, "epochs must be an int")
    refuses(lambda: fit(m, d, "rmsprop", progress=False), LensValueError, "'sgd', 'adam'")
    refuses(lambda: fit(m, d, torch.optim.SGD, progress=False), LensTypeError, "pass SGD")
    refuses(lambda: fit(m, d, "sgd", lr=0, progress=False), LensValueError, "lr must be a positive")
    refuses(lambda: fit(m, d, "sgd", lr=math.nan, progress=False), LensValueError, "lr must be a positive")
    refuses(lambda: fit(5, d, progress=False), LensTypeError, "nn.Module")
    refuses(lambda: fit(m, (d.x_train, d.y_train), progress=False), LensTypeError, "Split")
    short = data.Split(d.x_train, d.y_train[:-1], d.x_test, d.y_test, d.shape)
    refuses(lambda: fit(m, short, progress=False), LensValueError, "1348 rows and data.y_train 1347")
    floats = data.Split(d.x_train, d.y_train.float(), d.x_test, d.y_test, d.shape)
    refuses(lambda: fit(m, floats, progress=False), LensValueError, "int64 class labels")
    refuses(lambda: MLP((64, 8, 10), act="swish"), LensValueError, "act must be")


def test_demo_refusals(tmp_path):
    from autogradlens.demo import run_demo
    refuses(lambda: run_demo(tmp_path, epochs=0), LensValueError, "epochs must be at least 1")
    refuses(lambda: run_demo(tmp_path, data="cifar"), LensValueError, "mnist:DIR")
    refuses(lambda: run_demo(tmp_path, data=f"mnist:{tmp_path / 'nope'}"), LensFileNotFoundError)


def test_cli_turns_every_refusal_into_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "autogradlens.trace/1", "nodes": 5}')
    for argv in (["trace", str(bad)], ["diff", str(bad), str(bad)], ["trace", "nope:f"],
                 ["trace", "autogradlens.examples:neuron", "-o", str(tmp_path / "g.xyz")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("autogradlens: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


# ----------------------------------------------------------------------------- the whole library

# protocol signals (attribute, iteration, sequence index) and a missing optional dependency
ALLOWED = {"AttributeError", "StopIteration", "ImportError", "IndexError"}
# PyTorch's own error, raised by watch exactly as PyTorch raises it without watch (DESIGN §3: observe only)
ALLOWED_IN = {"recorders.py": {"RuntimeError"}}


def test_no_bare_builtin_raise_in_the_library():
    """Every `raise X(` in autogradlens/ raises a Lens error (or an internal class), never a bare built-in."""
    root = Path(lens.__file__).parent
    found = []
    for path in sorted(root.glob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            m = re.search(r"\braise\s+([A-Za-z_]\w*)\s*\(", line)
            if m and isinstance(getattr(builtins, m.group(1), None), type) and m.group(1) not in ALLOWED \
                    and m.group(1) not in ALLOWED_IN.get(path.name, ()):
                found.append(f"{path.name}:{i}: {line.strip()}")
    assert not found, "bare built-in raises:\n" + "\n".join(found)
