"""Rule helpers that PyTorch itself defines: rounding to low-precision dtypes, and what has no rule."""

import numpy as np
import pytest
import torch
from cases import NEW_CASES

from autogradlens import rules


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_round_to_rounds_as_pytorch_casts(dtype):
    x = torch.randn(20000, dtype=torch.float64) * torch.logspace(-40, 39, 20000, dtype=torch.float64)
    x[:4] = torch.tensor([float("inf"), -float("inf"), float("nan"), 1 + 2**-8])  # 1 + 2**-8: a bf16 tie
    want = x.to(getattr(torch, dtype)).double().numpy()
    assert np.array_equal(rules.round_to(dtype, x.numpy()), want, equal_nan=True)


def test_every_new_rule_has_a_case_and_no_rule_names_a_ruled_type():
    assert not set(rules.NO_RULE) & set(rules.RULES)
    assert len(NEW_CASES) >= 40
