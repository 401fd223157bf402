"""Rule helpers that PyTorch itself defines: rounding to low-precision dtypes, and what has no rule."""

import numpy as np
import pytest
import torch
from cases import CASES, Rand

import autogradlens as lens
from autogradlens.mirror import table


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_round_to_rounds_as_pytorch_casts(dtype):
    x = torch.randn(20000, dtype=torch.float64) * torch.logspace(-40, 39, 20000, dtype=torch.float64)
    x[:4] = torch.tensor([float("inf"), -float("inf"), float("nan"), 1 + 2**-8])  # 1 + 2**-8: a bf16 tie
    want = x.to(getattr(torch, dtype)).double().numpy()
    assert np.array_equal(table.round_to(dtype, x.numpy()), want, equal_nan=True)


def test_no_rule_lists_only_types_without_a_rule():
    assert not set(table.NO_RULE) & set(table.RULES)


class _Strict(np.ndarray):
    """An incoming gradient that refuses Python-level use of its values (the convention the mirror's
    rounding bound relies on: rules are numpy expressions, never `if g ...` or `float(g)`)."""

    def __bool__(self):
        raise AssertionError("a rule branched on the value of a gradient")

    def __float__(self):
        raise AssertionError("a rule took float() of a gradient")

    def __index__(self):
        raise AssertionError("a rule used a gradient as an index")


@pytest.mark.parametrize("name", sorted(CASES))
def test_rules_are_linear_in_the_incoming_gradient_and_never_branch_on_it(name, monkeypatch):
    """rule(2 g + 3 h) == 2 rule(g) + 3 rule(h) for every node of every case (ToCopy rounds: excluded)."""
    rng = np.random.default_rng(0)
    checked = []

    def wrap(orig):
        def rule(c):
            out = orig(c)
            if c.scalar or c.type == "ToCopyBackward0":
                return out
            h = [None if g is None else rng.standard_normal(np.shape(g)) for g in c.gs]
            mix = [None if g is None else (2 * np.asarray(g) + 3 * k).view(_Strict) for g, k in zip(c.gs, h)]
            ctx = table.Ctx
            out_h = orig(ctx(c.type, h, c.s, c.a, c.in_shapes, c.out_shapes, False, c.in_dtypes))
            out_mix = orig(ctx(c.type, mix, c.s, c.a, c.in_shapes, c.out_shapes, False, c.in_dtypes))
            for a, b, m in zip(out, out_h, out_mix):
                if a is None:
                    assert b is None and m is None
                    continue
                want = 2 * np.asarray(a, dtype=np.float64) + 3 * np.asarray(b, dtype=np.float64)
                np.testing.assert_allclose(np.asarray(m, dtype=np.float64), want, rtol=1e-9, atol=1e-9, err_msg=c.type)
            checked.append(c.type)
            return out
        return rule

    for t, f in list(table.RULES.items()):
        monkeypatch.setitem(table.RULES, t, wrap(f))
    r = Rand(0, torch.float64)
    lens.mirror(CASES[name](r), params=r.leaves, mode="tensor")
    assert checked or name == "to_bfloat16_float16"
