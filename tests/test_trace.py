import collections
import json
import math
import re

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models import MODELS, mlp_ce, saved_storages

import autogradlens as lens


def oracle(root):
    """Independent BFS over next_functions: node count by type, edge count, saved tensor slots."""
    seen, queue, by_type, edges, slots = {root}, collections.deque([root]), collections.Counter(), 0, 0
    while queue:
        fn = queue.popleft()
        by_type[type(fn).__name__] += 1
        for attr in dir(fn):
            if attr.startswith("_raw_saved_") and attr != "_raw_saved_tensors":
                v = getattr(fn, "_saved_" + attr[len("_raw_saved_"):])
                vals = v if isinstance(v, tuple) else (v,)
                slots += sum(isinstance(x, torch.Tensor) for x in vals)
        if hasattr(fn, "_raw_saved_tensors"):
            slots += len(fn.saved_tensors)
        for f, _ in fn.next_functions:
            if f is not None:
                edges += 1
                if f not in seen:
                    seen.add(f)
                    queue.append(f)
    return dict(by_type), edges, slots


@pytest.mark.parametrize("name", sorted(MODELS))
def test_graph_equals_next_functions_walk(name):
    loss, params = MODELS[name]()
    t = lens.trace(loss, params=params)
    by_type, edges, slots = oracle(loss.grad_fn)
    s = t.summary()
    assert s["by_type"] == dict(sorted(by_type.items()))
    assert s["edges"] == edges == t.graph.number_of_edges()
    assert s["saved_tensors"] == slots
    assert t.graph.nodes[t.root]["is_root"] and t.graph.in_degree(t.root) == 0
    for nid, d in t.graph.nodes(data=True):
        assert set(d) >= {"type", "is_leaf", "param", "shape", "dtype", "device", "saved", "attrs", "seq",
                          "is_root"}
        assert d["is_leaf"] == (d["type"] == "AccumulateGrad") == (d["seq"] is None)
        assert "0x" not in nid
    for u, v, k, d in t.graph.edges(keys=True, data=True):
        assert k == d["slot"]


def test_saved_slots_match_attributes_and_edges_follow_next_functions():
    loss, m = mlp_ce()
    t = lens.trace(loss, params=m)
    g = t.graph
    addmm = loss.grad_fn.next_functions[0][0].next_functions[0][0]
    node = g.nodes["AddmmBackward0:0"]
    assert {s["name"] for s in node["saved"]} == {"mat1", "mat2"}
    mat1 = next(s for s in node["saved"] if s["name"] == "mat1")
    assert mat1["shape"] == tuple(addmm._saved_mat1.shape) == (6, 5)
    assert mat1["nbytes"] == 6 * 5 * 8 and mat1["dtype"] == "float64" and mat1["state"] == "live"
    # ReLU's result and the next Linear's input are one storage
    relu = g.nodes["ReluBackward0:0"]["saved"][0]
    assert relu["storage"] == mat1["storage"] and relu["is_output"]
    assert mat1["alias"] == "ReluBackward0:0.result" or relu["alias"] == "AddmmBackward0:0.mat1"
    # Linear's mat2 is a view of the weight
    mat2 = next(s for s in node["saved"] if s["name"] == "mat2")
    assert mat2["alias"] == "2.weight" and not mat2["is_output"]
    # edges: Addmm -> bias (slot 0), Relu (slot 1), T (slot 2)
    out = sorted((k, v) for _, v, k in g.out_edges("AddmmBackward0:0", keys=True))
    assert out == [(0, "param:2.bias"), (1, "ReluBackward0:0"), (2, "TBackward0:1")]
    assert list(g.successors("TBackward0:1")) == ["param:2.weight"]
    assert g.nodes["param:2.weight"]["shape"] == (3, 5) and g.nodes["param:2.weight"]["param"] == "2.weight"
    # the first Linear does not save its input's partner: mat2 is None, with the reason
    first = g.nodes["AddmmBackward0:1"]
    assert [s["name"] for s in first["not_saved"]] == ["mat2"]
    assert "does not require grad" in first["not_saved"][0]["reason"]


def test_a_times_a_has_two_edges_and_unnamed_leaves_are_named_by_shape():
    a = torch.randn(5, 4, requires_grad=True)
    t = lens.trace((a * a).sum())
    leaf = "AccumulateGrad:0"
    assert t.graph.number_of_edges("MulBackward0:0", leaf) == 2
    assert sorted(k for _, _, k in t.graph.out_edges("MulBackward0:0", keys=True)) == [0, 1]
    assert t.graph.nodes[leaf]["param"] is None
    assert "leaf(5, 4)" in t.to_text() and "leaf(5, 4)" in t.to_dot()


def test_params_forms_are_equivalent():
    loss, m = mlp_ce()
    a = lens.trace(loss, params=m)
    b = lens.trace(loss, params=dict(m.named_parameters()))
    c = lens.trace(loss, params=m.named_parameters())  # a generator of pairs
    assert nx.utils.nodes_equal(a.graph.nodes(data=True), b.graph.nodes(data=True)) and b.to_json() == c.to_json()
    doc = json.loads(a.to_json())
    assert doc.pop("module_types")["0"] == "Linear"  # a module also gives its modules' classes, for the pictures
    assert json.dumps(doc) == json.dumps(json.loads(b.to_json()))
    with pytest.raises(TypeError, match="params must be"):
        lens.trace(loss, params=3)
    with pytest.raises(TypeError, match="expected a tensor"):
        lens.trace(loss, params={"w": 1.0})


def test_decoded_attributes():
    x = torch.randn(4, 3, requires_grad=True)
    loss = F.cross_entropy(torch.log_softmax(x, dim=-1), torch.tensor([0, 1, -100, 2]))
    t = lens.trace(loss)
    nll = t.graph.nodes[t.root]["attrs"]
    assert nll["ignore_index"] == -100 and nll["reduction"] == "mean"
    dims = [d["attrs"]["dim"] for _, d in t.graph.nodes(data=True) if d["type"] == "LogSoftmaxBackward0"]
    assert dims == [1, -1]
    s = lens.trace(torch.softmax(x, dim=-1).sum())
    assert s.graph.nodes["SoftmaxBackward0:0"]["attrs"]["dim"] == -1
    e = nn.Embedding(5, 2)
    emb = lens.trace(e(torch.tensor([1, 2])).sum()).graph.nodes["EmbeddingBackward0:0"]["attrs"]
    assert emb["padding_idx"] == -1 and emb["sparse"] is False


def test_dedup_bytes_equal_saved_tensors_hooks_measurement():
    for name in ("mlp_ce", "batchnorm", "layernorm", "conv", "residual", "embedding"):
        torch.manual_seed(1)
        storages, (loss, params) = saved_storages(MODELS[name])
        t = lens.trace(loss, params=params)
        assert t.summary()["saved_bytes"] == sum(storages.values()), name
        assert t.summary()["saved_storages"] == len(storages), name


def test_python_scalars_are_counted_though_pack_hooks_never_see_them():
    packs = []
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packs.append(t.shape) or t, lambda t: t):
        y = (x / 2.5).sum()
    assert packs == []  # the wrapped number 2.5 is saved without the hook
    slot = lens.trace(y).graph.nodes["DivBackward0:0"]["saved"][0]
    assert slot["name"] == "other" and slot["shape"] == () and slot["nbytes"] == 8


def test_states_live_freed_stale():
    loss, m = mlp_ce()
    assert {s["state"] for _, d in lens.trace(loss).graph.nodes(data=True) for s in d["saved"]} == {"live"}
    loss.backward()
    after = lens.trace(loss, params=m)  # structure still readable, no exception
    states = {s["state"] for _, d in after.graph.nodes(data=True) for s in d["saved"]}
    assert states == {"freed"}
    assert after.summary()["nodes"] == 11 and after.summary()["saved_bytes"] == 0
    assert after.graph.nodes["AddmmBackward0:0"]["saved"][0]["shape"] == (6, 5)  # from recorded sizes
    # stale: optimizer.step() changes the weights in place under a retained graph
    loss, m = mlp_ce()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss.backward(retain_graph=True)
    opt.step()
    t = lens.trace(loss, params=m)
    by_slot = {(n, s["name"]): s["state"] for n, d in t.graph.nodes(data=True) for s in d["saved"]}
    assert by_slot[("AddmmBackward0:0", "mat2")] == "stale"
    assert by_slot[("AddmmBackward0:0", "mat1")] == "live"
    assert "[stale]" in t.to_text() and 'color="red"' in t.to_dot()


def test_deterministic_ids_dot_and_json():
    def program():
        torch.manual_seed(3)
        return MODELS["attention"]()

    a, b = (lens.trace(loss, params=p) for loss, p in (program(), program()))
    assert list(a.graph.nodes) == list(b.graph.nodes)
    assert a.to_dot() == b.to_dot() and a.to_json() == b.to_json() and a.to_text() == b.to_text()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_json_round_trip_is_lossless(name):
    loss, params = MODELS[name]()
    t = lens.trace(loss, params=params)
    back = lens.Trace.from_json(t.to_json())
    assert nx.utils.graphs_equal(t.graph, back.graph)
    assert dict(t.graph.nodes(data=True)) == dict(back.graph.nodes(data=True))
    assert back.root == t.root and back.to_json() == t.to_json()
    json.loads(t.to_json())  # plain JSON


def test_module_titles_survive_json():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    t = lens.trace(m(torch.randn(5, 3)).sum(), params=m)
    back = lens.Trace.from_json(t.to_json())
    assert back.graph.graph["module_types"]["1"] == "BatchNorm1d"
    assert "1 · BatchNorm1d" in t.to_dot() and back.to_dot() == t.to_dot()
    doc = json.loads(t.to_json())
    for bad, where in (([1], "module_types: expected an object"), ({"1": 5}, "module_types['1']: expected a string")):
        with pytest.raises(ValueError, match=re.escape(where)):
            lens.Trace.from_json(json.dumps({**doc, "module_types": bad}))


def test_from_json_rejects_other_documents():
    with pytest.raises(ValueError, match="not a trace JSON"):
        lens.Trace.from_json("{nope")
    with pytest.raises(ValueError, match="not an autogradlens trace"):
        lens.Trace.from_json('{"a": 1}')


def test_long_chain_traces_without_recursion():
    x = torch.randn(2, requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0001
    t = lens.trace(y.sum())
    assert t.summary()["nodes"] == 20_002
    assert t.to_text().count("\n") == 20_001


def test_multiple_roots():
    x = torch.randn(3, requires_grad=True)
    h = x.exp()
    t = lens.trace([h.sum(), (h * 2).mean()], params={"x": x})
    assert t.root == ["SumBackward0:0", "MeanBackward0:0"]
    assert all(t.graph.nodes[r]["is_root"] for r in t.root)
    assert t.summary()["by_type"]["ExpBackward0"] == 1  # shared, traced once


def test_custom_function_copyslices_and_hooks_are_labelled():
    loss, params = MODELS["custom"]()
    t = lens.trace(loss, params=params)
    node = t.graph.nodes["CubeBackward:0"]
    assert node["attrs"]["k"] == 2.0 and node["saved"][0]["name"] == "saved_tensors[0]"
    assert node["saved"][0]["alias"] == "w"
    loss, params = MODELS["inplace"]()
    t = lens.trace(loss, params=params)
    assert t.summary()["by_type"]["CopySlices"] == 2
    lin = nn.Linear(3, 2)
    lin.register_full_backward_hook(lambda *a: None)
    t = lens.trace(lin(torch.randn(4, 3, requires_grad=True)).sum(), params=lin)
    assert "BackwardHookFunctionBackward" in t.summary()["by_type"]
    assert "BackwardHookFunctionBackward" in t.to_dot()


def test_torch_compile_region_is_traced():
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    cm = torch.compile(m, backend="aot_eager")
    t = lens.trace(cm(torch.randn(3, 4)).sum(), params=m)
    node = next(d for _, d in t.graph.nodes(data=True) if d["type"] == "CompiledFunctionBackward")
    assert len(node["saved"]) >= 1
    assert t.summary()["params"] == 4


def test_bad_input_errors():
    with pytest.raises(TypeError, match="torch.Tensor with a grad_fn"):
        lens.trace(3.0)
    with pytest.raises(ValueError, match="does not require grad.*no_grad"):
        lens.trace(torch.randn(3))
    with torch.no_grad():
        y = torch.randn(3, requires_grad=True) * 2
    with pytest.raises(ValueError, match="nothing to trace"):
        lens.trace(y)
    with pytest.raises(ValueError, match="a leaf has no graph"):
        lens.trace(torch.randn(3, requires_grad=True))
    with pytest.raises(ValueError, match="empty"):
        lens.trace([])
    with pytest.raises(TypeError, match=r"root\[1\]"):
        lens.trace([torch.randn(2, requires_grad=True).sum(), "loss"])


def test_summary_and_repr():
    loss, m = mlp_ce()
    t = lens.trace(loss, params=m)
    s = t.summary()
    assert s["nodes"] == 11 and s["params"] == 4 and s["leaves"] == 4
    assert s["saved_tensors"] == 8 and s["saved_storages"] == 6
    assert repr(t).startswith("<Trace 11 nodes, root NllLossBackward0:0")
    assert str(t) == t.to_text()


# ----------------------------------------------------------------------------- after backward, names

def _after_backward_graphs():
    from models import Cube
    from torch.utils.checkpoint import checkpoint

    from autogradlens.examples import makemore
    yield "makemore (IndexBackward0)", *makemore()
    w = torch.randn(3, requires_grad=True)
    yield "custom Function", Cube.apply(w, 2.0).sum(), {"w": w}
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    yield "reentrant checkpoint", checkpoint(m, torch.randn(5, 3, requires_grad=True), use_reentrant=True).sum(), m
    c = torch.compile(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), backend="aot_eager")
    yield "torch.compile (aot_eager)", c(torch.randn(5, 3)).pow(2).sum(), c


def test_trace_after_backward_reports_every_slot_freed_and_never_raises():
    for what, loss, params in _after_backward_graphs():
        before = lens.trace(loss, params=params).summary()
        loss.backward()
        t = lens.trace(loss, params=params)
        states = [s["state"] for _, d in t.graph.nodes(data=True) for s in d["saved"]]
        assert states and set(states) == {"freed"}, what
        assert t.summary()["nodes"] == before["nodes"], what


def test_params_name_intermediates_and_every_node_has_a_name_key():
    from autogradlens.examples import MAKEMORE_NAMES, makemore
    loss, names = makemore()
    g = lens.trace(loss, params=names).graph
    named = {d["name"]: d for _, d in g.nodes(data=True) if d["name"] is not None}
    assert set(MAKEMORE_NAMES) | {"C", "W1", "b1", "W2", "b2", "bngain", "bnbias"} == set(named)
    assert named["logprobs"]["type"] == "LogBackward0" and named["h"]["type"] == "TanhBackward0"
    assert named["W1"]["is_leaf"] and named["W1"]["param"] == "W1" and named["h"]["param"] is None
    assert "param:W1" in g and all("name" in d for _, d in g.nodes(data=True))
    assert lens.Trace.from_json(lens.trace(loss, params=names).to_json()).graph.nodes["param:C"]["name"] == "C"


def test_two_tensors_under_one_name_are_refused():
    a, b = torch.randn(2, requires_grad=True), torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match="two different tensors 'a'"):
        lens.trace((a * b).sum(), params=[("a", a), ("a", b)])
    with pytest.raises(TypeError):
        lens.trace((a * b).sum(), params=[("a", 3.0)])


def test_grads_of_complex_and_infinite_gradients_quietly():
    """grads=True on a complex region (view_as_complex) and on infinite gradients: sizes from |x|, strict JSON
    that reads back, and no numpy warning leaking out of the library."""
    import warnings

    a = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 1e300], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = lens.trace(torch.view_as_real(torch.view_as_complex(a) * 2).sum(), params={"a": a}, grads=True)
        back = lens.Trace.from_json(t.to_json())
        big = lens.trace((b * b * 1e300).sum(), params={"b": b}, grads=True)
        big.to_json()
    mul = next(d for _, d in t.graph.nodes(data=True) if d["type"] == "MulBackward0")
    assert mul["grad"]["norm"] == pytest.approx(6 ** 0.5) and mul["grad"]["mean"] is None  # |1+1j| * sqrt(3)
    assert back.to_text() == t.to_text()
    assert big.graph.nodes["param:b"]["grad"]["norm"] == math.inf
