"""torch.segment_reduce (SegmentReduceBackward0): the mirror's rule against PyTorch in float64 and float32 for every
reduction, lengths and offsets, along an inner axis, with empty segments; ties (PyTorch's backward is not linear
there) left unmirrored with the reason; a wrong gradient caught."""

import pytest
import torch
from cases import checked

import autogradlens as lens

DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


def _loss(dtype, reduce, kind="lengths", axis=0, initial=None, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    shape = (7, 3) if axis == 0 else (2, 7, 3)
    x = torch.randn(*shape, dtype=dtype, generator=g)
    if ties:
        x = torch.round(x)
    x.requires_grad_()
    lengths = torch.tensor([2, 0, 4, 1]) if axis == 0 else torch.tensor([[2, 0, 4, 1], [1, 3, 0, 3]])
    kw = {"lengths": lengths}
    if kind == "offsets":
        kw = {"offsets": torch.cat([torch.zeros(lengths.shape[:-1] + (1,), dtype=torch.long),
                                    lengths.cumsum(-1)], -1)}
    y = torch.segment_reduce(x, reduce, axis=axis, initial=initial, unsafe=True, **kw)
    return (y * torch.randn(y.shape, dtype=dtype, generator=g)).sum(), {"x": x}



@DTYPES
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "prod"])
@pytest.mark.parametrize("kind", ["lengths", "offsets"])
@pytest.mark.parametrize("axis", [0, 1])
def test_segment_reduce_matches_pytorch(dtype, reduce, kind, axis):
    initial = {"sum": 0.5, "prod": 2.0, "max": -0.2}.get(reduce)
    for init in (None, initial):
        for seed in range(3):
            loss, leaves = _loss(dtype, reduce, kind, axis, init, seed)
            checked(lens.mirror(loss, params=leaves, mode="tensor"), "SegmentReduceBackward0")


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "prod"])
def test_segment_reduce_in_scalar_mode(reduce):
    loss, leaves = _loss(torch.float64, reduce, "offsets", 1)
    rep = lens.mirror(loss, params=leaves, mode="scalar")
    assert rep.mode == "scalar"
    checked(rep, "SegmentReduceBackward0")


def test_ties_are_left_unmirrored_with_the_reason():
    loss, leaves = _loss(torch.float64, "max", ties=True)
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    assert rep.ok and rep.unmirrored == ["SegmentReduceBackward0"]
    assert "tie" in [r for r in rep.rows if r["type"] == "SegmentReduceBackward0"][0]["note"]


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "prod"])
def test_a_gradient_off_by_one_part_in_a_thousand_is_caught_in_float32(reduce):
    loss, leaves = _loss(torch.float32, reduce, axis=1)
    leaves["x"].register_hook(lambda gr: gr * (1 + 1e-3))
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    assert not rep.ok and [r for r in rep.rows if r["name"] == "x"][0]["e2e_status"] == "mismatch"
