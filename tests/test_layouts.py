"""Graphs holding sparse, complex or meta tensors: trace gives the whole structure (checked against PyTorch's own
next_functions) and says, per saved slot, what it cannot measure."""

import json
import warnings

import pytest
import torch

import autogradlens as lens


def structure(root):
    """PyTorch's own graph: (node type, [child types by slot]) for every node, walked from the root."""
    out, seen, stack = [], set(), [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        kids = [f for f, _ in fn.next_functions if f is not None]
        out.append((type(fn).__name__, sorted(type(f).__name__ for f in kids)))
        stack.extend(kids)
    return sorted(out)


def traced_structure(t):
    g = t.graph
    return sorted((d["type"], sorted(g.nodes[v]["type"] for _, v in g.out_edges(n))) for n, d in g.nodes(data=True))


def slots(t):
    return {f"{n}.{s['name']}": s for n, d in t.graph.nodes(data=True) for s in d["saved"]}


def sparse_coo():
    i = torch.tensor([[0, 1, 1], [2, 0, 2]])
    return torch.sparse_coo_tensor(i, torch.tensor([3.0, 4.0, 5.0]), (2, 3))


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_mm(layout):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PyTorch's "sparse CSR is beta" / invariant-check notes
        s = (sparse_coo() if layout == "coo" else sparse_coo().to_dense().to_sparse_csr()).requires_grad_()
    w = torch.randn(3, 2, requires_grad=True)
    loss = torch.sparse.mm(s, w).tanh().sum()
    t = lens.trace(loss, params={"s": s, "w": w})
    assert traced_structure(t) == structure(loss)
    assert {"param:s", "param:w"} <= set(t.graph)
    sp = [s for s in slots(t).values() if s["unmeasured"]]
    dense = [s for s in slots(t).values() if not s["unmeasured"]]
    assert len(sp) == 1 and f"sparse_{layout}" in sp[0]["unmeasured"] and "not measured" in sp[0]["unmeasured"]
    assert sp[0]["shape"] == (2, 3) and sp[0]["dtype"] == "float32" and sp[0]["state"] == "live"
    assert sp[0]["nbytes"] is None and sp[0]["storage"] is None and sp[0]["alias"] is None
    assert dense and all(d["storage"] is not None and d["nbytes"] for d in dense)
    assert t.summary()["saved_bytes"] == sum({d["storage"]: d["storage_nbytes"] for d in dense}.values())
    back = lens.Trace.from_json(t.to_json())
    assert slots(back) == slots(t) and "not measured" in json.dumps(json.loads(t.to_json()))
    assert "SparseAddmmBackward0" in t.to_text() or "MmBackward0" in t.to_text()
    assert lens.diff(t, back).is_empty and "digraph" in t.to_dot()


def test_complex_op():
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    loss = (z * z).abs().sum()
    t = lens.trace(loss, params={"z": z})
    assert traced_structure(t) == structure(loss)
    s = slots(t)
    mul = {k.split(".")[1]: v for k, v in s.items() if k.startswith("MulBackward0")}
    assert mul["self"]["dtype"] == "complex64" and mul["self"]["nbytes"] == 3 * 8
    assert mul["self"]["storage"] == mul["other"]["storage"] and mul["self"]["alias"] in ("param:z", "z")
    assert all(v["unmeasured"] is None for v in s.values())
    assert t.summary()["saved_bytes"] == 2 * 3 * 8  # z, and z*z saved by abs


def test_meta_device_graph():
    w = torch.empty(3, 2, device="meta", requires_grad=True)
    x = torch.empty(4, 3, device="meta")
    loss = (x @ w).tanh().sum()
    t = lens.trace(loss, params={"w": w})
    assert traced_structure(t) == structure(loss)
    s = slots(t)
    assert s and all(v["device"] == "meta" and "meta tensor holds no memory" in v["unmeasured"] for v in s.values())
    # every meta storage has address 0: none may be mistaken for another's memory
    assert all(v["storage"] is None and v["alias"] is None for v in s.values())
    assert s["TanhBackward0:0.result"]["nbytes"] == 4 * 2 * 4 and t.summary()["saved_bytes"] == 0
    assert "TanhBackward0:0" in t.to_text()
