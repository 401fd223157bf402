"""PyTorch's own operator database (OpInfo) on a fixed subset of ops, as benchmarks/opinfo.py sweeps all of it:
every op listed here comes out fully checked with no mismatch in float64 and float32 (the issue's defects among them),
and an op whose gradient PyTorch's own test suite expects to be wrong is caught."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import opinfo  # noqa: E402

SUBSET = [
    "native_group_norm", "native_layer_norm", "nn.functional.layer_norm",
    "nn.functional.binary_cross_entropy_with_logits",
    "as_strided.partial_views", "nn.functional.gelu", "nn.functional.multi_margin_loss", "sum", "amax", "topk",
    "index_reduce.mean", "linalg.vector_norm", "linalg.svd", "linalg.qr", "linalg.pinv", "linalg.solve", "linalg.lu",
    "linalg.eigh", "linalg.cholesky", "linalg.det", "linalg.slogdet", "linalg.inv", "fft.rfft", "fft.irfft", "stft",
    "matrix_exp", "linalg.eig", "linalg.eigvals", "linalg.householder_product", "ormqr",
    "polygamma.polygamma_n_0", "mvlgamma.mvlgamma_p_3", "digamma", "lgamma", "diagonal", "squeeze", "view_as_complex",
    "nn.functional.grid_sample", "grid_sampler_3d", "_upsample_bilinear2d_aa", "_segment_reduce.lengths",
    "_segment_reduce.offsets", "nn.functional.ctc_loss",
]


@pytest.fixture(scope="module")
def ops():
    db = {opinfo.op_name(op): op for op in opinfo.op_db()}
    return [db[n] for n in SUBSET]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_the_subset_is_fully_checked_without_mismatch(ops, dtype):
    results = [opinfo.check_op(op, dtype, samples=2) for op in ops]
    bad = [(r["op"], r["verdict"], r["notes"], r["bad"][:2]) for r in results if r["verdict"] != "ok"]
    assert not bad, bad
    t = opinfo.totals(results)
    assert t["ops"] == len(SUBSET) and t["nodes checked %"] == 100.0


def test_pytorchs_expected_gradient_failure_is_caught_and_counted_apart():
    op = next(op for op in opinfo.op_db() if opinfo.op_name(op) == "as_strided_scatter")
    assert opinfo.known_wrong(op)
    r = opinfo.check_op(op, torch.float64, samples=2)
    assert r["verdict"] == "torch wrong" and "AsStridedScatterBackward0" in r["bad"][0]
    assert opinfo.totals([r])["ops"] == 0 and opinfo.totals([r])["torch wrong"] == ["as_strided_scatter"]
