"""NaN and infinite inputs: the mirror's verdicts follow what PyTorch's kernels do there (issue 21, item 7).

Where PyTorch passes a gradient through a NaN (relu, hardtanh, threshold, maximum, elu's `x <= 0 ? ... : g`), the
mirror must agree; where one side is NaN and the other a number, that is a mismatch, never a match."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import autogradlens as lens
from autogradlens.mirror import table

OPS = {
    "relu": torch.relu, "relu6": F.relu6, "hardtanh": F.hardtanh, "threshold": lambda x: F.threshold(x, 0.1, 0.0),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "elu": F.elu, "selu": F.selu, "celu": F.celu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "mish": F.mish, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "softplus": F.softplus, "logsigmoid": F.logsigmoid, "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid, "softshrink": F.softshrink, "hardshrink": F.hardshrink, "abs": torch.abs,
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "sin": torch.sin, "atan": torch.atan, "erf": torch.erf,
    "reciprocal": torch.reciprocal, "square": torch.square, "pow3": lambda x: x ** 3, "sign": torch.sign,
    "clamp": lambda x: x.clamp(-0.5, 0.5), "mul": lambda x: x * x.detach().flip(0), "div": lambda x: x / 3.0,
    "maximum": lambda x: torch.maximum(x, x.detach().flip(0)),
    "minimum": lambda x: torch.minimum(x, x.detach().flip(0)), "max": lambda x: x.max(), "min": lambda x: x.min(),
    "amax": lambda x: x.amax(0), "max_dim": lambda x: x.max(0).values,
    "median": lambda x: x.median(), "sum": torch.sum, "mean": torch.mean, "softmax": lambda x: x.softmax(0),
    "log_softmax": lambda x: x.log_softmax(0), "logsumexp": lambda x: x.logsumexp(0), "cumsum": lambda x: x.cumsum(0),
    "sort": lambda x: x.sort().values, "norm": lambda x: x.norm(), "var": lambda x: x.var(),
    "where": lambda x: torch.where(x.detach() > 0, x, 2 * x),
}


def _verdict(f, values, dtype):
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    y = f(x)
    loss = (y * torch.linspace(0.5, 1.5, y.numel(), dtype=dtype).reshape(y.shape)).sum()
    (want,) = torch.autograd.grad(loss, [x], retain_graph=True)
    return lens.mirror(loss, params={"x": x}, mode="tensor"), want.numpy()


@pytest.mark.parametrize("special", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_one_nonfinite_element_gives_pytorchs_gradient_in_every_op(special):
    wrong = []
    for name, f in OPS.items():
        for dtype in (torch.float64, torch.float32):
            rep, want = _verdict(f, [0.3, special, -1.2, 0.7], dtype)
            mine = rep.grads["x"]
            same_nan = np.array_equal(np.isnan(mine), np.isnan(want))
            if not rep.ok or not same_nan or not np.allclose(mine, want, rtol=1e-5, equal_nan=True):
                wrong.append((name, str(dtype), rep.ok, want.tolist(), mine.tolist()))
    assert not wrong, wrong


def test_a_nan_on_one_side_only_is_a_mismatch_whatever_the_bound(monkeypatch):
    """elu's old rule (`x > 0 ? G scale : G alpha e^x`) gave NaN where PyTorch gives G: reported, not matched."""
    monkeypatch.setitem(table.RULES, "EluBackward0", lambda c: (np.where(
        c.s["self"] > 0, c.g, c.g * np.exp(c.s["self"])),))
    rep, _ = _verdict(F.elu, [0.3, float("nan"), -1.2, 0.7], torch.float64)
    row = next(r for r in rep.rows if r["type"] == "EluBackward0")
    assert row["status"] == "mismatch" and not rep.ok
    rep, _ = _verdict(F.elu, [0.3, 0.5, -1.2, 0.7], torch.float64)  # the same rule is right on finite inputs
    assert rep.ok
