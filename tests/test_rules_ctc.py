"""F.ctc_loss (CtcLossBackward0 / CtcLossBackward1): the mirror's rule (the beta recursion in log space, the
posterior per label) against PyTorch in float64 and float32, over reductions, zero_infinity, padded and concatenated
targets, shorter inputs and empty targets; an impossible alignment without zero_infinity left unmirrored with the
reason; wrong gradients caught."""

import random

import pytest
import torch
import torch.nn.functional as F
from cases import checked

import autogradlens as lens

CTC = {"CtcLossBackward0", "CtcLossBackward1"}



def _case(seed, dtype, tensors=False):
    """A random batch whose every element has an alignment (input length >= 2 target length + 1)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    t, n, c, s = rng.randint(1, 14), rng.randint(1, 3), rng.randint(2, 6), rng.randint(0, 4)
    tl = [rng.randint(0, min(s, (t - 1) // 2)) for _ in range(n)]
    il = [rng.randint(2 * k + 1, t) for k in tl]
    il[0] = t
    tg = torch.randint(1, c, (n, max(s, 1)), generator=g)
    if rng.random() < 0.4:
        tg = torch.cat([tg[i, :tl[i]] for i in range(n)])
    x = torch.randn(t, n, c, dtype=dtype, generator=g).requires_grad_()
    lp = x.log_softmax(2)
    if tensors:
        nll = torch.ops.aten._ctc_loss.Tensor(lp, tg, torch.tensor(il), torch.tensor(tl), 0, False)[0]
        return (nll * torch.rand(n, dtype=dtype, generator=g)).sum(), {"x": x}
    red = rng.choice(["none", "mean", "sum"])
    loss = F.ctc_loss(lp, tg, torch.tensor(il), torch.tensor(tl), reduction=red, zero_infinity=rng.random() < 0.5)
    if red == "none":
        loss = (loss * torch.rand(n, dtype=dtype, generator=g)).sum()
    return loss, {"x": x}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("tensors", [False, True], ids=["lengths", "length_tensors"])
def test_ctc_loss_matches_pytorch(dtype, tensors):
    for seed in range(25):
        loss, leaves = _case(seed, dtype, tensors)
        checked(lens.mirror(loss, params=leaves, mode="tensor"), CTC)


def test_ctc_loss_in_scalar_mode():
    loss, leaves = _case(3, torch.float64)
    rep = lens.mirror(loss, params=leaves, mode="scalar")
    assert rep.mode == "scalar"
    checked(rep, CTC)


def _impossible(zero_infinity):
    x = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    tg = torch.tensor([[1, 1], [2, 3]])  # "1 1" needs 3 frames (a blank between), the input has 2
    return F.ctc_loss(x.log_softmax(2), tg, torch.tensor([2, 2]), torch.tensor([2, 1]),
                      zero_infinity=zero_infinity, reduction="sum"), {"x": x}


def test_an_impossible_alignment_with_zero_infinity_is_mirrored_and_otherwise_left_unmirrored():
    loss, leaves = _impossible(True)
    checked(lens.mirror(loss, params=leaves, mode="tensor"), CTC)
    loss, leaves = _impossible(False)
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    row = [r for r in rep.rows if r["type"] in CTC][0]
    assert row["status"] == "unmirrored" and "impossible alignment" in row["note"]


@pytest.mark.parametrize("dtype,factor", [(torch.float64, 1e-7), (torch.float32, 1e-3)], ids=["f64", "f32"])
def test_a_wrong_gradient_is_caught(dtype, factor):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, 5, dtype=dtype, generator=g).requires_grad_()
    x.register_hook(lambda gr: gr * (1 + factor))
    tg = torch.randint(1, 5, (2, 3), generator=g)
    loss = F.ctc_loss(x.log_softmax(2), tg, torch.tensor([12, 9]), torch.tensor([3, 2]))
    rep = lens.mirror(loss, params={"x": x}, mode="tensor")
    assert not rep.ok and [r for r in rep.rows if r["name"] == "x"][0]["e2e_status"] == "mismatch"


def test_the_local_bound_of_a_short_sequence_is_tight_enough_to_judge_the_node():
    """The log-sum-exp steps are bounded as 1-Lipschitz (not by the generic rules, whose bound doubles with every
    time step): a float64 node's bound stays far below its gradient."""
    loss, leaves = _case(5, torch.float64)
    rep = lens.mirror(loss, params=leaves, mode="tensor")
    row = [r for r in rep.rows if r["type"] in CTC][0]
    assert row["bound"] < 1e-9
