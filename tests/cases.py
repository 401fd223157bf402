"""The rule catalogue as small programs: each case(r) builds a loss from leaves made by r (a Rand)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


class Rand:
    def __init__(self, seed: int, dtype=torch.float64, n: int = 3):
        self.g = torch.Generator().manual_seed(seed)
        self.dtype, self.n, self.leaves = dtype, n, {}

    def __call__(self, *shape, grad=True, positive=False, name=None):
        t = torch.randn(*shape, generator=self.g, dtype=self.dtype)
        if positive:
            t = t.abs() + 0.5
        t.requires_grad_(grad)
        if grad:
            self.leaves[name or f"p{len(self.leaves)}"] = t
        return t

    def ints(self, high, *shape):
        return torch.randint(0, high, shape, generator=self.g)


def checked(rep, types, *, notes_ok: bool = False) -> list:
    """A MirrorReport with no mismatch anywhere (locally or end to end), nothing unmirrored, no note (with `notes_ok`,
    none but a rule failing or a bound falling back), and the nodes of `types` (a name or a collection) compared:
    their rows, each a match with a bound."""
    types = {types} if isinstance(types, str) else set(types)
    bad = [(r["type"], r["status"], r["note"]) for r in rep.rows
           if r["status"] != "match" or r.get("e2e_status") == "mismatch"
           or ((r["note"] or "").startswith(("rule failed", "bound:")) if notes_ok else r["note"])]
    assert not bad and rep.ok and not rep.unmirrored, rep.to_text()
    rows = [r for r in rep.rows if r["type"] in types]
    assert rows and all(r["status"] == "match" and r["bound"] is not None for r in rows), rep.to_text()
    return rows


def a_hooked_input_is_caught(params: dict, loss) -> None:
    """A hook on the input "a" scaling its gradient by 1 + 1e-6 (it no longer follows the mathematics): the mirror
    finds a mismatch where it arrives, at a leaf."""
    import autogradlens as lens
    params["a"].register_hook(lambda g: g * (1 + 1e-6))
    rep = lens.mirror(loss, params=params, mode="tensor")
    assert not rep.ok
    assert any(r["status"] == "mismatch" for r in rep.rows if r["kind"] == "leaf")


def a_rule_off_is_a_mismatch_at_its_node(node: str, params: dict, loss, monkeypatch) -> None:
    """The rule for `node` made 1e-6 off (relative): its bound is tight enough (float64) to flag the node itself."""
    import numpy as np

    import autogradlens as lens
    from autogradlens.mirror import table
    orig = table.RULES[node]

    def wrong(c):
        return tuple(o if o is None or not isinstance(o, np.ndarray) else o * (1 + 1e-6) for o in orig(c))
    monkeypatch.setitem(table.RULES, node, wrong)
    rep = lens.mirror(loss, params=params, mode="tensor")
    assert [r["status"] for r in rep.rows if r["type"] == node] == ["mismatch"]


def weighted(r, out):
    """A scalar loss with a random upstream gradient (not all ones)."""
    return (out * torch.randn(out.shape, generator=r.g, dtype=out.dtype)).sum()


def _bn(r, training):
    x, w, b = r(r.n + 3, 4), r(4), r(4)
    rm, rv = torch.randn(4, dtype=r.dtype).abs(), torch.rand(4, dtype=r.dtype) + 0.5
    return weighted(r, F.batch_norm(x, rm, rv, w, b, training=training))


def _cdist(r):
    """Every p, batches broadcast (2 against 1), and a pair at distance 0 (x2's first row is x1's)."""
    a = r(2, r.n, 3)
    b = torch.cat([a[:1, :1], r(1, 3, 3)], 1)
    return weighted(r, sum(torch.cdist(a, b, p=p) for p in (0.0, 0.5, 1.0, 2.0, 3.0, float("inf"))))


def _cumprod(r):
    """Slices without a zero, with one, and with several (x times a mask: the zeros are exact)."""
    mask = torch.ones(r.n, 6, dtype=r.dtype)
    mask[0, 2] = 0
    mask[-1, 1] = mask[-1, 4] = 0
    return weighted(r, (r(r.n, 6) * mask).cumprod(1)) + weighted(r, r(r.n, 3, 2).cumprod(0))


def _prod(r):
    """No zero (result / x), one zero in a slice, two in another (exclusive products); full products with
    one zero and with two (PyTorch's zeros)."""
    mask = torch.ones(r.n, 5, dtype=r.dtype)
    mask[0, 1] = 0
    mask[-1, 2] = mask[-1, 4] = 0
    x = r(r.n, 5) * mask
    return (weighted(r, x.prod(1)) + weighted(r, r(r.n, 4).prod(0, keepdim=True)) + r(3, 2).prod()
            + (r(4) * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=r.dtype)).prod()
            + (r(4) * torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=r.dtype)).prod() * 3)


def _with_a_repeated_row(x):  # a pair at distance 0
    return torch.cat([x, x[:1]])


def _scatter_reduce(r):
    """Every reduce but prod, with and without self; ties (values rounded to halves) share amax's gradient."""
    idx = torch.tensor([[0, 1, 2], [1, 1, 0], [0, 2, 2], [3, 0, 1], [1, 3, 3]])
    out = 0
    for red in ("sum", "mean", "amax", "amin"):
        for keep in (True, False):
            out = out + weighted(r, r(4, 3).scatter_reduce(0, idx, r(5, 3), red, include_self=keep))
    def halves(x):  # values rounded to halves (ties), the gradient straight through
        return x - x.detach() + torch.round(x.detach() * 2) / 2

    out = out + weighted(r, halves(r(4, 3)).scatter_reduce(0, idx, halves(r(5, 3)), "amax"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "index_reduce", UserWarning)  # "in beta"
        return out + weighted(r, r(4, 2).index_reduce(0, torch.tensor([0, 2, 0, 3]), r(4, 2), "mean"))


CASES = {
    "linear": lambda r: weighted(r, F.linear(r(r.n, 4), r(5, 4), r(5))),
    "linear_3d": lambda r: weighted(r, F.linear(r(2, r.n, 4), r(5, 4), r(5))),
    "linear_no_bias": lambda r: weighted(r, F.linear(r(r.n, 4), r(5, 4))),
    "linear_data_input": lambda r: weighted(r, F.linear(r(r.n, 4, grad=False), r(5, 4), r(5))),
    "relu": lambda r: weighted(r, torch.relu(r(r.n, 5))),
    "tanh": lambda r: weighted(r, torch.tanh(r(r.n, 5))),
    "sigmoid": lambda r: weighted(r, torch.sigmoid(r(r.n, 5))),
    "gelu": lambda r: weighted(r, F.gelu(r(r.n, 5))),
    "gelu_tanh": lambda r: weighted(r, F.gelu(r(r.n, 5), approximate="tanh")),
    "leaky_relu": lambda r: weighted(r, F.leaky_relu(r(r.n, 5), 0.1)),
    "silu": lambda r: weighted(r, F.silu(r(r.n, 5))),
    "dropout_train": lambda r: weighted(r, F.dropout(r(r.n, 6), 0.5, training=True)),
    "batchnorm_train": lambda r: _bn(r, True),
    "batchnorm_eval": lambda r: _bn(r, False),
    "layernorm": lambda r: weighted(r, F.layer_norm(r(r.n, 2, 6), (6,), r(6), r(6))),
    "flatten_view_reshape": lambda r: weighted(r, r(r.n, 2, 3).flatten(1).view(-1).reshape(r.n, 6)),
    "contiguous_reshape": lambda r: weighted(r, r(r.n, 4).transpose(0, 1).contiguous().reshape(2, -1)),
    "cross_entropy_weights_ignore": lambda r: F.cross_entropy(
        r(r.n + 2, 4), torch.tensor([0, 3, -100, 1, 2][: r.n + 2] + [1] * max(0, r.n - 3)),
        weight=torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=r.dtype)),
    "cross_entropy_label_smoothing": lambda r: F.cross_entropy(r(r.n, 4), r.ints(4, r.n), label_smoothing=0.1),
    "cross_entropy_sum": lambda r: F.cross_entropy(r(r.n, 4), r.ints(4, r.n), reduction="sum"),
    "nll_loss": lambda r: F.nll_loss(torch.log_softmax(r(r.n, 4), dim=1), r.ints(4, r.n)),
    "mse_loss": lambda r: F.mse_loss(r(r.n, 3), r(r.n, 3)),
    "mse_loss_sum": lambda r: F.mse_loss(r(r.n, 3), torch.randn(r.n, 3, dtype=r.dtype), reduction="sum"),
    "log_softmax": lambda r: weighted(r, torch.log_softmax(r(r.n, 5), dim=-1)),
    "softmax": lambda r: weighted(r, torch.softmax(r(r.n, 5), dim=0)),
    "logsumexp": lambda r: weighted(r, torch.logsumexp(r(r.n, 5), dim=1)),
    "embedding": lambda r: weighted(r, F.embedding(torch.tensor([[1, 2, 1], [0, 4, 4]]), r(6, 3), padding_idx=4)),
    "conv2d": lambda r: weighted(r, F.conv2d(r(2, 2, 6, 6), r(3, 2, 3, 3), r(3), stride=2, padding=1)),
    "conv2d_dilated": lambda r: weighted(r, F.conv2d(r(1, 2, 7, 7), r(2, 2, 3, 3), dilation=2)),
    "max_pool2d": lambda r: weighted(r, F.max_pool2d(r(2, 2, 6, 6), 2)),
    "max_pool2d_overlap": lambda r: weighted(r, F.max_pool2d(r(1, 2, 5, 5), 3, stride=1)),
    "avg_pool2d": lambda r: weighted(r, F.avg_pool2d(r(2, 2, 6, 6), 2)),
    "avg_pool2d_padded": lambda r: weighted(r, F.avg_pool2d(r(1, 2, 5, 5), 3, stride=2, padding=1)),
    "mean_sum_all": lambda r: r(r.n, 4).mean() + r(r.n, 4).sum(),
    "mean_sum_dim": lambda r: weighted(r, r(r.n, 4, 2).mean(dim=1) + r(r.n, 2, 3).sum(dim=2)
                                       + r(r.n, 4, 2).mean(dim=(1, 2), keepdim=True)[:, 0]),
    "pow_exp_log_sqrt": lambda r: weighted(r, r(r.n, 4).pow(3) + r(r.n, 4).exp() + r(r.n, 4, positive=True).log()
                                            + r(r.n, 4, positive=True).sqrt() + r(r.n, 4) ** 2),
    "abs_neg": lambda r: weighted(r, r(r.n, 4).abs() - r(r.n, 4)),
    "broadcast_arith": lambda r: weighted(r, (r(r.n, 4) + r(4)) * r(r.n, 1) - r(1, 4) / r(r.n, 4, positive=True)),
    "scalar_arith": lambda r: weighted(r, 2 * r(r.n, 3) + 1 - (3 - r(r.n, 3)) / 2 + 2 / r(r.n, 3, positive=True)),
    "tensor_pow": lambda r: weighted(r, r(r.n, 3, positive=True) ** r(r.n, 3) + 2 ** r(r.n, 3)),
    "matmul_mm_bmm": lambda r: weighted(r, (r(2, r.n, 4) @ r(2, 4, 3)) @ r(3, 2) + torch.mm(r(r.n, 2), r(2, 2))),
    "matmul_vec": lambda r: weighted(r, r(r.n, 4) @ r(4)) + r(4) @ r(4),
    "transpose_permute_t": lambda r: weighted(r, r(2, r.n, 4).transpose(0, 1).permute(2, 0, 1) + r(2, 4).T[:, None]),
    "expand_squeeze_unsqueeze": lambda r: weighted(r, r(r.n, 1).expand(r.n, 4).unsqueeze(1).squeeze(1)
                                                    + r(1, r.n, 1, 4).squeeze()),
    "select_slice": lambda r: weighted(r, r(4, 5)[1] + r(5, 4)[:, 1] + r(4, 5)[1:3].sum(0) + r(4, 5)[::2, 1:5:2].sum()),
    "index_duplicates": lambda r: weighted(r, r(5, 3)[torch.tensor([0, 2, 2, 4])] + r(4, 3)[:, [1, 1, 0]].sum(1,
                                                                                                      True)),
    "cat_stack": lambda r: weighted(r, torch.cat([r(r.n, 2), r(r.n, 3)], dim=1).sum(1) + torch.stack([r(r.n),
                                                                                                     r(r.n)]).sum(0)),
    "split_chunk": lambda r: weighted(r, sum(p.sum(1) for p in r(r.n, 6).split([1, 2, 3], dim=1))
                                      + r(r.n, 4).chunk(2, dim=1)[1].sum(1)),
    "unbind": lambda r: weighted(r, torch.unbind(r(3, r.n))[2]),
    "where_clamp": lambda r: weighted(r, torch.where(r(r.n, 4, grad=False) > 0, r(r.n, 4), r(r.n, 4))
                                      + r(r.n, 4).clamp(-0.5, 0.5) + torch.clamp_min(r(r.n, 4), 0)),
    "max_amax": lambda r: weighted(r, r(r.n, 4).max(dim=1).values + r(r.n, 4).amax(dim=0).sum() + r(r.n, 4).max()),
    "max_ties": lambda r: (torch.tensor([1.0, 3.0, 3.0, 2.0], dtype=r.dtype, requires_grad=True) * 1).max() * 2
                          + (torch.tensor([[1.0, 3.0], [3.0, 3.0]], dtype=r.dtype, requires_grad=True) + 0).amax(1).sum(),
    "masked_fill_flip": lambda r: weighted(r, r(r.n, 4).masked_fill(torch.arange(4) % 2 == 0, 0.0).flip(0, 1)),
    "rsub_tensor_sub_alpha": lambda r: weighted(r, torch.rsub(r(r.n, 3), r(r.n, 3), alpha=2)
                                                 + torch.sub(r(r.n, 3), r(r.n, 3), alpha=3)),
    "masked_fill_tensor_value": lambda r: weighted(r, r(r.n, 4).masked_fill(torch.arange(4) > 1, r(()))),
    "min_amin_minimum_maximum": lambda r: weighted(r, r(r.n, 4).min(dim=1).values + r(r.n, 4).amin(1) + r(r.n, 4).min()
                                                   + torch.minimum(r(r.n, 4), r(r.n, 4)).sum(1)
                                                   + torch.maximum(r(r.n, 4), r(r.n, 4)).sum(1)),
    "clamp_max_threshold_hardtanh": lambda r: weighted(r, torch.clamp_max(r(r.n, 4), 0.1) + F.threshold(r(r.n, 4), 0.1, 0.)
                                                       + F.hardtanh(r(r.n, 4), -0.5, 0.7) + F.relu6(r(r.n, 4))),
    "to_alias_squeeze_dims": lambda r: weighted(r, r(r.n, 4).to(torch.float32).to(r.dtype) + torch.ops.aten.alias(r(r.n, 4))
                                                + r(1, r.n, 4).squeeze((0,))),
    "leaky_relu_inplace": lambda r: weighted(r, F.leaky_relu(r(r.n, 4) * 1, 0.2, inplace=True)),
    "elu_softplus": lambda r: weighted(r, F.elu(r(r.n, 4)) + F.softplus(3 * r(r.n, 4), beta=2, threshold=5)),
    "sin_cos_log1p_rsqrt_sign": lambda r: weighted(r, r(r.n, 4).sin() + r(r.n, 4).cos() + r(r.n, 4, positive=True).log1p()
                                                   + r(r.n, 4, positive=True).rsqrt() + r(r.n, 4).sign() * 2),
    "repeat_gather_index_select_pad": lambda r: weighted(r, r(r.n, 4).repeat(2, 1)[: r.n]
                                                         + r(r.n, 4).gather(1, torch.tensor([[3, 0, 0, 1]] * r.n))
                                                         + r(5, 4).index_select(0, torch.arange(r.n) % 2)
                                                         + F.pad(r(r.n, 1), (1, 2))),
    "repeat_more_dims": lambda r: weighted(r, r(2, 3).repeat(2, 1, 2)),
    "bce_with_logits": lambda r: F.binary_cross_entropy_with_logits(
        r(r.n, 4), torch.rand(r.n, 4, generator=r.g, dtype=r.dtype), weight=torch.full((4,), 0.5, dtype=r.dtype),
        pos_weight=torch.full((4,), 2.0, dtype=r.dtype)) + F.binary_cross_entropy_with_logits(
        r(r.n, 2), torch.rand(r.n, 2, generator=r.g, dtype=r.dtype), reduction="sum"),
    "cumsum_var_std_norm": lambda r: weighted(r, r(r.n, 4).cumsum(1) + r(r.n, 4).var(1, keepdim=True)
                                              + r(r.n, 4).std() + r(r.n, 4).norm(dim=1, keepdim=True)),
    "normalize": lambda r: weighted(r, F.normalize(r(r.n, 4), dim=1)),
    "cumprod": _cumprod,
    "prod": _prod,
    "sub_scalar_cosine_embedding": lambda r: torch.ops.aten.sub.Scalar(r(r.n, 3), 1.5).pow(2).sum()
        + F.cosine_embedding_loss(r(r.n, 4), r(r.n, 4), torch.tensor([1.0, -1.0] * r.n, dtype=r.dtype)[: r.n]),
    "addcmul_addcdiv_lerp": lambda r: weighted(r, torch.addcmul(r(r.n, 4), r(r.n, 4), r(1, 4), value=0.5))
        + weighted(r, torch.addcdiv(r(r.n, 4), r(r.n, 4), r(r.n, 4, positive=True), value=-2.0))
        + weighted(r, torch.lerp(r(r.n, 4), r(r.n, 4), 0.3))
        + weighted(r, torch.lerp(r(r.n, 4), r(r.n, 4), r(r.n, 4))),
    "hypot_atan2": lambda r: weighted(r, torch.hypot(r(r.n, 4), r(r.n, 4))) + weighted(r, torch.atan2(r(r.n, 4), r(4))),
    "celu_shrinks": lambda r: weighted(r, F.celu(r(r.n, 6), 1.5)) + weighted(r, F.hardshrink(r(r.n, 6), 0.3))
        + weighted(r, F.softshrink(r(r.n, 6), 0.3)),
    "trace_diag_embed_take_masked_select": lambda r: torch.trace(r(4, 5)) * 2
        + weighted(r, torch.diag_embed(r(2, r.n), 1, 0, 2))
        + weighted(r, r(r.n, 4).take(torch.tensor([0, -1, 2, 0])))
        + weighted(r, r(r.n, 4).masked_select(torch.tensor([True, False, True, True]))),
    "cummax_cummin_unfold": lambda r: weighted(r, r(r.n, 5).cummax(1).values) + weighted(r, r(4, r.n).cummin(0).values)
        + weighted(r, r(r.n, 7).unfold(1, 3, 2)) + weighted(r, r(4, r.n).unfold(0, 2, 1)),
    "soft_margin_dist_pdist": lambda r: F.soft_margin_loss(r(r.n, 4), torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=r.dtype))
        + F.soft_margin_loss(r(r.n, 3), torch.ones(r.n, 3, dtype=r.dtype), reduction="sum")
        + sum(torch.dist(r(r.n, 4), r(4), p) for p in (1, 2, 3, float("inf")))  # p = 0: PyTorch has no backward
        + sum(weighted(r, F.pdist(_with_a_repeated_row(r(r.n + 1, 3)), p)) for p in (0.0, 0.5, 1.0, 2.0, 3.0, float("inf"))),
    "max_unpool": lambda r: weighted(r, F.max_unpool2d(*F.max_pool2d(r(1, 2, 4, 4), 2, return_indices=True), 2))
        + weighted(r, F.max_unpool1d(*F.max_pool1d(r(1, 2, 6), 2, return_indices=True), 2))
        + weighted(r, F.max_unpool3d(*F.max_pool3d(r(1, 1, 4, 2, 2), 2, return_indices=True), 2)),
    "flat_and_pass_through": lambda r: sum(weighted(r, f(r(r.n, 5))) for f in (
        torch.sgn, torch.floor, torch.ceil, torch.round, lambda x: torch.round(x, decimals=1), torch.trunc,
        torch.frac, lambda x: torch.fmod(x, 0.7), lambda x: torch.remainder(x, -0.7))),
    "fmod_remainder_tensor": lambda r: weighted(r, torch.fmod(r(r.n, 4), r(r.n, 4, positive=True)))
        + weighted(r, torch.remainder(r(r.n, 4), -r(r.n, 4, positive=True))),
    "nan_to_num_logit": lambda r: weighted(r, torch.nan_to_num(torch.where(
        torch.tensor([True, False, True, True]), r(r.n, 4), torch.tensor(float("inf"), dtype=r.dtype))))
        + weighted(r, torch.logit(torch.sigmoid(r(r.n, 4)))) + weighted(r, torch.logit(torch.sigmoid(3 * r(r.n, 4)), 0.1)),
    "exp2_sinc_xlogy_copysign_entr_logaddexp": lambda r: weighted(r, torch.exp2(r(r.n, 4)))
        + weighted(r, torch.deg2rad(r(r.n, 4)) + torch.rad2deg(r(r.n, 4)))
        + weighted(r, torch.sinc(r(r.n, 4) * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=r.dtype)))
        + weighted(r, torch.xlogy(r(r.n, 4) * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=r.dtype), 2.0))
        + weighted(r, torch.copysign(r(r.n, 4), -1.0) + torch.copysign(r(r.n, 4), r(r.n, 4)))
        + weighted(r, torch.special.entr(r(r.n, 4, positive=True)))
        + weighted(r, torch.logaddexp(r(r.n, 4), r(r.n, 4)) + torch.logaddexp2(r(r.n, 4), r(4))),
    "weight_norm": lambda r: weighted(r, torch._weight_norm(r(5, r.n), r(5, 1), 0))
        + weighted(r, torch._weight_norm(r(2, r.n, 4), r(1, 1, 4), 2)),  # nn.utils weight_norm, first and last dim
    "scatter_reduce": _scatter_reduce,
    "constant_slots": lambda r: weighted(r, torch.addcmul(r(r.n, 4, grad=False), r(r.n, 4), r(r.n, 4, grad=False)))
        + weighted(r, torch.addcdiv(r(r.n, 4), r(r.n, 4, grad=False), r(r.n, 4, positive=True)))
        + weighted(r, torch.lerp(r(r.n, 4, grad=False), r(r.n, 4), r(r.n, 4, grad=False)))
        + weighted(r, torch.lerp(r(r.n, 4, grad=False), r(r.n, 4, grad=False), r(r.n, 4)))
        + weighted(r, torch.hypot(r(r.n, 4, grad=False), r(r.n, 4)))
        + weighted(r, torch.linalg.cross(r(r.n, 3), r(r.n, 3, grad=False)))
        + weighted(r, torch.fmod(r(r.n, 4), r(r.n, 4, positive=True, grad=False)))
        + weighted(r, torch.fmod(r(r.n, 4, grad=False), r(r.n, 4, positive=True)))
        + weighted(r, torch.copysign(r(r.n, 4, grad=False), r(r.n, 4))),  # PyTorch saves only what a slot needs
    "inverse": lambda r: weighted(r, torch.linalg.inv(r(2, 3, 3) + 3 * torch.eye(3, dtype=r.dtype)))
        + weighted(r, torch.inverse(r(4, 4) + 4 * torch.eye(4, dtype=r.dtype))),
    "multi_margin": lambda r: F.multi_margin_loss(r(r.n, 5), r.ints(5, r.n))  # the multiclass SVM loss
        + F.multi_margin_loss(r(r.n, 5), r.ints(5, r.n), p=2, margin=0.5, weight=torch.rand(5, dtype=r.dtype),
                              reduction="sum")
        + weighted(r, F.multi_margin_loss(r(r.n, 4), r.ints(4, r.n), reduction="none")),
    "cross_block_diag": lambda r: weighted(r, torch.linalg.cross(r(r.n, 3), r(1, 3)))
        + weighted(r, torch.block_diag(r(2, 3), r(4), r(1, 2)))
        + weighted(r, torch.block_diag(r(2, 2), r(3, grad=False), r(2, 1))),  # a block needing no gradient
    "cdist_p": lambda r: _cdist(r),
    "cdist_many_rows": lambda r: weighted(r, torch.cdist(r(r.n + 26, 3), r(5, 3))),  # the matrix-product path
    "cross_entropy_probabilities": lambda r: F.cross_entropy(r(r.n, 4), torch.softmax(torch.randn(r.n, 4, dtype=r.dtype),
                                                                                       1)),
    "einsum": lambda r: weighted(r, torch.einsum("bij,bkj->bik", r(2, r.n, 4), r(2, 3, 4))),
}



def _grad_of_grad(r, f, *shapes):
    """A gradient-penalty style loss: the gradient of f's output w.r.t. its inputs, made part of a loss."""
    xs = [r(*s) for s in shapes]
    gs = torch.autograd.grad(weighted(r, f(*xs)), xs, create_graph=True)
    return sum(weighted(r, g) for g in gs) + sum(x.sum() for x in xs) / 4  # every input reaches the loss


def _lstm(r, **kw):  # float32 inside: PyTorch fuses a CPU LSTM layer (MkldnnRnnLayerBackward0) only below float64
    m = torch.nn.LSTM(2, 3, **kw)
    for i, p in enumerate(m.parameters()):
        r.leaves[f"lstm{i}"] = p
    # a float64 input reaching the float32 layer is not a leaf here: today's verdict holds a float64 leaf to float64
    # tolerance even when its gradient came through float32 (the float32 runs check the input gradient)
    out, (h, c) = m(r(r.n, 2, 2, grad=r.dtype != torch.float64).float())
    return weighted(r, out.to(r.dtype)) + weighted(r, h.to(r.dtype)) + weighted(r, c.to(r.dtype))


def _embedding_bag(r, mode, **kw):
    w = r(7, 3)
    idx, off = torch.tensor([1, 2, 4, 5, 4, 3, 0, 6]), torch.tensor([0, 3, 3, 5])  # bag 1 empty
    psw = r(8) if kw.pop("psw", False) else None
    return weighted(r, F.embedding_bag(idx, w, off, mode=mode, per_sample_weights=psw, **kw))


def _sdpa(r, **kw):
    q, k, v = r(1, 2, r.n, 2), r(1, 2, 4, 2), r(1, 2, 4, 2)
    return weighted(r, F.scaled_dot_product_attention(q, k, v, **kw))


NEW_CASES = {
    "conv1d_stride_pad_dilation": lambda r: weighted(r, F.conv1d(r(2, 2, 9), r(3, 2, 3), r(3), stride=2, padding=2,
                                                                 dilation=2)),
    "conv2d_groups": lambda r: weighted(r, F.conv2d(r(1, 4, 5, 4), r(6, 2, 2, 3), r(6), stride=(2, 1),
                                                    padding=(1, 0), groups=2)),
    "conv2d_depthwise": lambda r: weighted(r, F.conv2d(r(2, 3, 5, 5), r(3, 1, 3, 3), padding=1, groups=3)),
    "conv2d_data_input": lambda r: weighted(r, F.conv2d(r(1, 2, 4, 4, grad=False), r(2, 2, 3, 3), stride=2)),
    "conv2d_data_weight": lambda r: weighted(r, F.conv2d(r(1, 2, 4, 4), r(2, 2, 3, 3, grad=False), padding=1)),
    "conv3d": lambda r: weighted(r, F.conv3d(r(1, 2, 3, 4, 4), r(2, 1, 2, 2, 3), r(2), stride=(1, 2, 1),
                                             padding=(0, 1, 1), dilation=(2, 1, 1), groups=2)),
    "conv_transpose1d": lambda r: weighted(r, F.conv_transpose1d(r(2, 2, 4), r(2, 3, 3), r(3), stride=3, padding=1,
                                                                 output_padding=2)),
    "conv_transpose2d_groups": lambda r: weighted(r, F.conv_transpose2d(r(1, 4, 3, 3), r(4, 1, 2, 3), r(2),
                                                                        stride=2, padding=(0, 1), groups=2,
                                                                        output_padding=1, dilation=(1, 2))),
    "conv_transpose3d": lambda r: weighted(r, F.conv_transpose3d(r(1, 2, 2, 2, 3), r(2, 2, 2, 2, 2), stride=2)),
    "hardswish_hardsigmoid": lambda r: weighted(r, F.hardswish(4 * r(r.n, 5)) + F.hardsigmoid(4 * r(r.n, 5))),
    "unsafe_split_transpose_": lambda r: weighted(r, sum(t * (i + 1) for i, t in enumerate(
        torch.ops.aten.unsafe_split(r(r.n, 6) * 1, 2, 1))) + (r(2, r.n) * 1).transpose_(0, 1)
        + torch.ops.aten.unsafe_split_with_sizes(r(r.n, 3) * 1, [1, 2], 1)[1].sum(1, True)),
    "add_sub_scalar": lambda r: weighted(r, torch.ops.aten.add(r(r.n, 2), 2.5) + torch.ops.aten.sub(r(r.n, 2), 1.5)),
    "baddbmm": lambda r: weighted(r, torch.baddbmm(r(2, r.n, 3), r(2, r.n, 4), r(2, 4, 3), beta=0.5, alpha=2.0)
                                  + torch.baddbmm(r(1, 3), r(2, r.n, 2), r(2, 2, 3))),
    "as_strided": lambda r: weighted(r, (r(4, 5) * 1).as_strided((3, 3), (5, 2), 1)
                                     + torch.as_strided(r(4, 5) * 1, (3, 3), (1, 1))),
    "pixel_shuffle_unshuffle": lambda r: weighted(r, F.pixel_shuffle(r(1, 8, 2, 3), 2)) + weighted(
        r, F.pixel_unshuffle(r(2, 1, 4, 6), 2)),
    "adaptive_avg_max_pool": lambda r: weighted(r, F.adaptive_avg_pool2d(r(1, 2, 5, 7), (3, 4))) + weighted(
        r, F.adaptive_max_pool2d(r(1, 2, 5, 5), (2, 3))) + weighted(r, F.adaptive_avg_pool3d(r(1, 1, 3, 4, 5), 2))
        + weighted(r, F.adaptive_max_pool1d(r(1, 2, 7), 3)),
    "upsample_nearest": lambda r: weighted(r, F.interpolate(r(1, 2, 3, 4), scale_factor=2, mode="nearest")
                                           ) + weighted(r, F.interpolate(r(1, 1, 5, 4), size=(3, 7)))
        + weighted(r, F.interpolate(r(1, 1, 4), scale_factor=1.7)) + weighted(r, F.interpolate(
            r(1, 1, 2, 2, 3), size=(3, 4, 2))),
    "upsample_bilinear": lambda r: weighted(r, F.interpolate(r(1, 2, 3, 4), scale_factor=1.7, mode="bilinear"))
        + weighted(r, F.interpolate(r(1, 1, 4, 3), size=(5, 7), mode="bilinear", align_corners=True))
        + weighted(r, F.interpolate(r(1, 1, 4, 3), size=(2, 2), mode="bilinear")),
    "upsample_nearest_exact": lambda r: weighted(r, F.interpolate(r(1, 2, 3, 4), scale_factor=1.5, mode="nearest-exact"))
        + weighted(r, F.interpolate(r(1, 1, 5, 4), size=(3, 7), mode="nearest-exact"))
        + weighted(r, F.interpolate(r(1, 1, 4), scale_factor=1.7, mode="nearest-exact"))
        + weighted(r, F.interpolate(r(1, 1, 2, 3, 2), size=(3, 4, 3), mode="nearest-exact")),
    "upsample_bicubic": lambda r: weighted(r, F.interpolate(r(1, 2, 4, 5), scale_factor=1.7, mode="bicubic"))
        + weighted(r, F.interpolate(r(1, 1, 4, 3), size=(7, 5), mode="bicubic", align_corners=True))
        + weighted(r, F.interpolate(r(2, 2, 4, 5), size=(3, 5), mode="bicubic")),  # shrinking, taps at the border
    "upsample_linear_trilinear": lambda r: weighted(r, F.interpolate(r(1, 2, 4), scale_factor=2.5, mode="linear"))
        + weighted(r, F.interpolate(r(1, 1, 2, 3, 2), size=(3, 4, 4), mode="trilinear", align_corners=True)),
    "binary_cross_entropy": lambda r: F.binary_cross_entropy(torch.sigmoid(r(r.n, 4)), torch.rand(
        r.n, 4, generator=r.g, dtype=r.dtype), weight=torch.rand(4, generator=r.g, dtype=r.dtype)) + \
        F.binary_cross_entropy(torch.sigmoid(r(r.n, 2)), torch.sigmoid(r(r.n, 2)), reduction="sum"),
    "group_instance_norm": lambda r: weighted(r, F.group_norm(r(2, 4, 3), 2, r(4), r(4)) + F.group_norm(
        r(2, 4, 3), 1)) + weighted(r, F.instance_norm(r(2, 2, 2, 3), weight=r(2), bias=r(2))),
    "embedding_bag_sum_psw_padding": lambda r: _embedding_bag(r, "sum", psw=True, padding_idx=4),
    "embedding_bag_mean": lambda r: _embedding_bag(r, "mean"),
    "embedding_bag_max": lambda r: _embedding_bag(r, "max"),
    "sdpa": lambda r: _sdpa(r),
    "sdpa_causal_scale": lambda r: _sdpa(r, is_causal=True, scale=0.3),
    "sdpa_float_mask": lambda r: _sdpa(r, attn_mask=torch.randn(r.n, 4, generator=r.g, dtype=r.dtype)),
    "sdpa_bool_mask_empty_row": lambda r: _sdpa(r, attn_mask=torch.tensor([[False] * 4] + [[True, False, True,
                                                                                          True]] * (r.n - 1))),
    "to_bfloat16_float16": lambda r: weighted(r, r(r.n, 4).to(torch.bfloat16).to(r.dtype) * 3
                                              + (r(r.n, 4) * 1e3).to(torch.float16).to(r.dtype)),
    "lstm_fused": lambda r: _lstm(r),
    "lstm_fused_bidirectional_no_bias": lambda r: _lstm(r, bidirectional=True, bias=False, num_layers=2),
    "double_tanh_sigmoid_silu_relu": lambda r: _grad_of_grad(
        r, lambda x: torch.tanh(x) + torch.sigmoid(x) * 2 + F.silu(x) + torch.relu(x) * x, (r.n, 4)),
    "double_gelu_softplus": lambda r: _grad_of_grad(
        r, lambda x: F.gelu(x) + F.gelu(x, approximate="tanh") + F.softplus(x, beta=2, threshold=1), (r.n, 4)),
    "double_log_softmax_nll": lambda r: _grad_of_grad(
        r, lambda x: F.cross_entropy(x, torch.tensor([0, 2, 1, -100, 3][: r.n] + [1] * max(0, r.n - 5)),
                                     weight=torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=r.dtype)), (r.n, 4)),
    "double_softmax_nll_sum": lambda r: _grad_of_grad(
        r, lambda x: F.nll_loss(torch.softmax(x, 1), r.ints(4, r.n), reduction="sum"), (r.n, 4)),
    "double_layer_norm": lambda r: _grad_of_grad(
        r, lambda x, w, b: F.layer_norm(x, (2, 3), w, b), (r.n, 2, 3), (2, 3), (2, 3)),
    "double_layer_norm_no_affine": lambda r: _grad_of_grad(r, lambda x: F.layer_norm(x, (4,)) * x, (r.n, 4)),
    "double_batch_norm_train": lambda r: _grad_of_grad(
        r, lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), (r.n + 1, 2, 3), (2,), (2,)),
    "double_batch_norm_eval": lambda r: _grad_of_grad(
        r, lambda x, w, b: F.batch_norm(x, torch.tensor([0.1, -0.2], dtype=r.dtype), torch.tensor(
            [0.5, 2.0], dtype=r.dtype), w, b, training=False), (r.n, 2, 3), (2,), (2,)),
    "double_conv2d": lambda r: _grad_of_grad(
        r, lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), (1, 4, 5, 5), (2, 2, 3, 3), (2,)),
    "double_conv_transpose1d": lambda r: _grad_of_grad(
        r, lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1), (2, 2, 4),
        (2, 3, 3), (3,)),
    "mish_logsigmoid_erf": lambda r: weighted(r, F.mish(r(r.n, 4)) + F.logsigmoid(r(r.n, 4)) + torch.erf(r(r.n, 4))),
    "prelu_glu": lambda r: weighted(r, F.prelu(r(r.n, 3, 2), r(3)) + F.glu(r(r.n, 3, 4), -1).sum(-1, True)),
    "xlogy_kl_div": lambda r: weighted(r, torch.xlogy(r(r.n, 3, positive=True).masked_fill(
        torch.tensor([True, False, False]), 0.0), r(r.n, 3, positive=True))
                                      + torch.xlogy(torch.tensor([0.0, 0.0, 1.0], dtype=r.dtype, requires_grad=True),
                                                    torch.tensor([-1.0, 0.5, 2.0], dtype=r.dtype, requires_grad=True))
                                      ) + F.kl_div(
        torch.log_softmax(r(r.n, 4), 1), torch.softmax(r(r.n, 4), 1), reduction="batchmean"),
    "p_norms": lambda r: weighted(r, torch.norm(r(r.n, 4), p=3, dim=1) + torch.norm(r(r.n, 4), p=1, dim=0).sum()
                                  + torch.norm(r(r.n, 4), dim=1, keepdim=True)[:, 0] + torch.norm(r(r.n, 4), 2.5)
                                  + torch.norm(r(r.n, 4), float("inf"), dim=1) + torch.norm(r(r.n, 4), p=3) + torch.norm(r(r.n, 4))
                                  + torch.linalg.vector_norm(r(r.n, 4), 0.5, dim=1)
                                  + torch.ops.aten.norm(r(r.n, 4), 3) + torch.ops.aten.norm(r(r.n, 4), 1.5, [1], True)[:, 0]
                                  + torch.ops.aten.norm(r(r.n, 4), 2, [0]).sum() + F.pairwise_distance(r(r.n, 4), r(r.n, 4))),
    "huber_smooth_l1": lambda r: F.huber_loss(r(r.n, 4), r(r.n, 4), delta=0.5) + F.smooth_l1_loss(
        r(r.n, 4), r(r.n, 4), beta=0.7, reduction="sum") + weighted(r, F.smooth_l1_loss(r(r.n, 2), r(r.n, 2),
                                                                                        reduction="none")),
    "sort_topk_kthvalue_median_mode": lambda r: weighted(r, torch.sort(r(r.n, 5), 1, descending=True).values
                                                          + r(r.n, 5).topk(5, 1).values) + weighted(
        r, r(r.n, 5).kthvalue(2, 1).values + r(r.n, 5).median(1).values) + weighted(
        r, (torch.tensor([[1.0, 2.0, 2.0], [3.0, 3.0, 1.0]], dtype=r.dtype, requires_grad=True) * 1).mode(1).values),
    "index_add_tril_triu_roll": lambda r: weighted(r, torch.zeros(5, 3, dtype=r.dtype).index_add(
        0, torch.tensor([0, 2, 2][: r.n] + [4] * max(0, r.n - 3)), r(r.n, 3), alpha=2) + r(5, 3).tril(-1)
        + r(5, 3).triu(1) + torch.roll(r(5, 3), (1, -2), (0, 1)) + torch.roll(r(5, 3), 4)),
    "unfold_fold": lambda r: weighted(r, F.unfold(r(1, 2, 4, 5), (2, 3), dilation=(1, 2), padding=1, stride=(2, 1)))
        + weighted(r, F.fold(r(1, 4, 6), (3, 4), 2)),
    "nll_loss_2d_max_pool3d": lambda r: F.cross_entropy(r(2, 3, 2, r.n), r.ints(3, 2, 2, r.n), ignore_index=1,
                                                        weight=torch.tensor([1.0, 0.5, 2.0], dtype=r.dtype))
        + weighted(r, F.max_pool3d(r(1, 2, 4, 4, 4), 2)) + F.nll_loss(r(2, 3, r.n), r.ints(3, 2, r.n), reduction="sum"),
    "reflection_replication_pad": lambda r: weighted(r, F.pad(r(1, 2, 5, 6), (1, 2, 4, 1), mode="reflect"))
        + weighted(r, F.pad(r(1, 2, 5), (3, 1), mode="reflect")) + weighted(r, F.pad(r(1, 1, 4, 3, 4), (1, 0, 2, 1, 0, 3),
                                                                                    mode="reflect"))
        + weighted(r, F.pad(r(1, 2, 3, 4), (2, 1, 0, 3), mode="replicate")) + weighted(
            r, F.pad(r(1, 2, 4), (2, 1), mode="replicate")) + weighted(r, F.pad(r(1, 1, 2, 2, 3), (1,) * 6,
                                                                                 mode="replicate")),
    "avg_pool_ceil_exclude_pad_3d": lambda r: weighted(r, F.avg_pool2d(r(1, 2, 5, 6), 3, 2, 1, ceil_mode=True,
                                                                       count_include_pad=False))
        + weighted(r, F.avg_pool2d(r(1, 1, 5, 5), (2, 3), (2, 1), (1, 1), ceil_mode=True, divisor_override=4))
        + weighted(r, F.avg_pool3d(r(1, 1, 4, 3, 5), 2, padding=1, count_include_pad=False))
        + weighted(r, F.avg_pool1d(r(1, 2, 7), 3, 2, 1)),
    "index_put_scatter_fill": lambda r: weighted(r, torch.index_put(r(5, 3) * 1, (torch.tensor([0, 2, 2]),), r(3, 3))
                                                 + torch.index_put(r(5, 3), (torch.tensor([1, 1]), torch.tensor([0, 2])),
                                                                   r(2), accumulate=True)
                                                 + (r(5, 3) * 1).index_put_((torch.arange(5) % 2 == 0,), r(3))
                                                 + r(5, 3).scatter_add(0, torch.tensor([[0, 1, 4], [4, 1, 0]]), r(2, 3))
                                                 + r(5, 3).scatter(1, torch.tensor([[0], [2], [2]]), r(3, 1))[:5]
                                                 + r(5, 3).scatter(0, torch.tensor([[1, 3, 0]]), 2.0)
                                                 + r(5, 3).index_fill(1, torch.tensor([0, 2]), -1.0)
                                                 + r(5, 3).masked_scatter(torch.tensor([True, False, True]), r(17))),
}
CASES.update(NEW_CASES)


def _unit(r, *shape):  # inside (-0.9, 0.9): for asin, atanh, erfinv
    return torch.tanh(r(*shape)) * 0.9


def _zero_gradient_ops(r):
    """Ops whose gradient is zero everywhere: angle of a real tensor, division with rounding, fill_, zero_, random
    samples (normal, bernoulli), each beside a term that does have a gradient."""
    x, p, m = r(r.n, 3), torch.sigmoid(r(r.n, 3)), r(r.n, 3)
    out = torch.angle(x) + torch.div(x, 0.7, rounding_mode="floor") + torch.div(x, x.detach() + 3, rounding_mode="trunc")
    out = out + x.clone().fill_(2.0) + x.clone().zero_() + torch.normal(m, 1.0, generator=r.g)
    out = out + torch.normal(2.0, p, generator=r.g) + torch.normal(m, p, generator=r.g) + m.clone().normal_(generator=r.g)
    out = out + torch.bernoulli(p, generator=r.g) + m.clone().bernoulli_(0.5, generator=r.g)
    return weighted(r, out + m.clone().bernoulli_(p, generator=r.g) + x * m * p)


def _views_copy(r):
    """The *_copy ops (a view op that copies): each has its view's backward."""
    x = r(2, r.n, 1, 3)
    out = torch.squeeze_copy(x).sum() + torch.squeeze_copy(x, 2).sum() + torch.squeeze_copy(x, (0, 2)).sum(0)[0]
    out = out + torch.select_copy(x, 1, 0).sum() + torch.slice_copy(x, 1, 0, 1).sum() + torch.t_copy(r(3, 2))[1]
    out = out + torch.split_copy(x, 1, 0)[1].sum() + torch.split_with_sizes_copy(x, [1, 1], 0)[0].sum()
    out = out + torch.transpose_copy(x, 0, 3).sum((1, 2, 3)) + torch.permute_copy(x, (3, 1, 2, 0)).sum((1, 2, 3))
    out = out + torch.unbind_copy(x, 3)[2].sum() + torch.unfold_copy(r(5), 0, 2, 1).sum() + torch.alias_copy(r(3))
    out = out + torch.unsqueeze_copy(r(3), 0)[0] + torch.view_copy(r(1, 3), (3,)) + torch.expand_copy(r(1), (3,))
    out = out + torch.diagonal_copy(r(3, 4)) + torch.as_strided_copy(r(2, 3) * 1, (3,), (2,), 0)
    return weighted(r, out)


def _in_place_squeezes(r):  # squeeze_(), squeeze_(dim), squeeze_(dims): SqueezeBackward3, 4, 5
    x = r(1, r.n, 1, 2)
    return weighted(r, x.clone().squeeze_().sum(-1) + x.clone().squeeze_(0).sum((1, 2)) + x.clone().squeeze_((0, 2))[:, 0])


def _scatter_views(r):
    x = r(4, 5)
    return weighted(r, torch.diagonal_scatter(x, r(4), 0) + torch.diagonal_scatter(x, r(4), 1, 0, 1)
                    + torch.select_scatter(x, r(5), 0, 2) + torch.slice_scatter(x, r(4, 2), 1, 1, 5, 2)
                    + x.diagonal(-1).sum() + torch.rot90(r(5, 4), 1, (0, 1)) + torch.rot90(r(4, 5), 2)
                    + torch.narrow_copy(r(4, 7), 1, 2, 5))


def _index_writes(r):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*_unsafe_masked_index.*")
        mask = torch.tensor([[True, False, True], [False, True, True]])
        idx = (torch.tensor([[0], [3]]), torch.tensor([[1, 7, 2]]))  # 7: out of range where the mask is off
        a = torch.ops.aten._unsafe_masked_index(r(4, 3), mask, idx[:1] + (torch.tensor([[1, 0, 2]]),), 0.0)
        b = torch.ops.aten._unsafe_masked_index_put_accumulate(r(4, 3), mask, (idx[0], torch.tensor([[1, 0, 2]])),
                                                              r(2, 3))
    x = r(5, 3)
    out = x.index_copy(0, torch.tensor([3, 0]), r(2, 3)) + x.put(torch.tensor([1, -2, 4]), r(3))
    out = out + x.put(torch.tensor([1, 1, 4]), r(3), accumulate=True) + x.index_fill(1, torch.tensor([2]), r(()))
    out = out + torch.zeros(5, 3, dtype=r.dtype).copy_(r(3)) + x.clone().fill_(r(())) + torch.fill(x, 2.0)
    out = out + torch.fill(x, r(()))
    return weighted(r, out) + weighted(r, a) + weighted(r, b) + weighted(r, r(()).index_copy(0, torch.tensor([0]), r(())))


def _pools(r):
    s2 = torch.rand(1, 2, 2, generator=r.g, dtype=r.dtype)
    s3 = torch.rand(1, 2, 3, generator=r.g, dtype=r.dtype)
    out = weighted(r, F.fractional_max_pool2d(r(1, 2, 7, 6), 2, output_size=(3, 3), _random_samples=s2))
    out = out + weighted(r, F.fractional_max_pool3d(r(1, 2, 5, 5, 4), 2, output_size=2, _random_samples=s3))
    out = out + weighted(r, F.adaptive_max_pool3d(r(1, 2, 4, 3, 5), (2, 2, 3)))
    x2, x3 = r(1, 2, 4, 6, grad=False), r(1, 1, 4, 4, 4, grad=False)
    o2, i2 = F.max_pool2d(x2, 2, return_indices=True)
    o3, i3 = F.max_pool3d(x3, 2, return_indices=True)
    g2, g3 = r(*o2.shape), r(*o3.shape)
    out = out + weighted(r, torch.ops.aten.max_pool2d_with_indices_backward(g2, x2, [2, 2], [2, 2], [0, 0], [1, 1],
                                                                            False, i2))
    return out + weighted(r, torch.ops.aten.max_pool3d_with_indices_backward(g3, x3, [2] * 3, [2] * 3, [0] * 3,
                                                                             [1] * 3, False, i3))


def _stft_magnitude(r):
    """An audio front end: the magnitude of a short-time Fourier transform (frames by as_strided, a window, rfft)."""
    x = r(2, 40)
    spec = torch.stft(x, n_fft=8, hop_length=4, window=torch.hann_window(8, dtype=r.dtype), return_complex=True)
    return weighted(r, torch.view_as_real(spec).pow(2).sum(-1).add(1e-6).sqrt()) + weighted(r, spec.abs())


def _fft_conv(r):
    """A convolution through the FFT (irfft(rfft(x) rfft(w))), and the complex transforms, polar and complex."""
    x, w = r(r.n, 8), r(8)
    y = torch.fft.irfft(torch.fft.rfft(x) * torch.fft.rfft(w), n=8)
    z = torch.fft.fft2(r(3, 4)) * torch.polar(r(3, 4, positive=True), r(3, 4)) + torch.complex(r(3, 4), r(3, 4))
    z = torch.fft.ifft(z.conj() / (torch.view_as_complex(r(3, 4, 2)) + 3), dim=0) + torch.conj_physical(z)
    return weighted(r, y) + weighted(r, torch.view_as_real(z.resolve_conj())) + weighted(r, torch.fft.hfft(z, n=6)) + weighted(
        r, torch.view_as_real(torch.fft.ihfft(r(r.n, 5)).resolve_conj()))


ISSUE_19_CASES = {
    "trig_hyperbolic_log": lambda r: weighted(r, torch.asin(_unit(r, r.n, 3)) + torch.acos(_unit(r, r.n, 3))
                                              + torch.atan(r(r.n, 3)) + torch.asinh(r(r.n, 3))
                                              + torch.acosh(r(r.n, 3, positive=True) + 1) + torch.atanh(_unit(r, r.n, 3))
                                              + torch.sinh(r(r.n, 3)) + torch.cosh(r(r.n, 3)) + torch.tan(r(r.n, 3) * 0.5)
                                              + torch.expm1(r(r.n, 3)) + torch.log2(r(r.n, 3, positive=True))
                                              + torch.log10(r(r.n, 3, positive=True)) + torch.erfc(r(r.n, 3))),
    "special_gamma": lambda r: weighted(r, torch.lgamma(r(r.n, 3, positive=True)) + torch.digamma(r(r.n, 3) * 3)
                                        + torch.polygamma(2, r(r.n, 3, positive=True)) + torch.polygamma(1, r(r.n, 3) * 3)
                                        + torch.mvlgamma(r(r.n, 3, positive=True) + 2, 3)),
    "special_bessel_normal": lambda r: weighted(r, torch.i0(r(r.n, 3) * 3) + torch.special.i0e(r(r.n, 3) * 3)
                                                + torch.special.i1(r(r.n, 3) * 3) + torch.special.i1e(r(r.n, 3) * 3)
                                                + torch.erfinv(_unit(r, r.n, 3))
                                                + torch.special.ndtri(torch.sigmoid(r(r.n, 3)))
                                                + torch.special.log_ndtr(r(r.n, 3) * 3) + torch.special.erfcx(r(r.n, 3))
                                                + torch.special.xlog1py(r(r.n, 3), r(r.n, 3, positive=True))),
    "fmax_fmin_clamp_tensors": lambda r: weighted(r, torch.fmax(r(r.n, 4), r(r.n, 4)) + torch.fmin(r(r.n, 4), r(4))
                                                  + torch.clamp(r(r.n, 4), r(r.n, 4) - 0.5, r(r.n, 4) + 0.5)
                                                  + torch.clamp(r(r.n, 4), min=r(4)) + torch.clamp_min(r(r.n, 4), r(4))
                                                  + torch.clamp_max(r(r.n, 4), r(r.n, 1))),
    "zero_gradient_ops": _zero_gradient_ops,
    "nextafter_frexp_ldexp_rrelu": lambda r: weighted(r, torch.nextafter(r(r.n, 3), r(r.n, 3))
                                                      + torch.frexp(r(r.n, 3)).mantissa
                                                      + torch.ldexp(r(r.n, 3), r(r.n, 3))
                                                      + F.rrelu(r(r.n, 3), training=True)),
    "dropout_double": lambda r: weighted(r, torch.ops.aten.native_dropout_backward(
        r(r.n, 4), torch.rand(r.n, 4, generator=r.g) > 0.3, 1 / 0.7)),
    "views_copy": _views_copy,
    "squeeze_in_place": _in_place_squeezes,
    "scatter_views_rot90_narrow": _scatter_views,
    "channel_shuffle": lambda r: weighted(r, F.channel_shuffle(r(2, 6, 2, r.n), 3)),
    "index_writes": _index_writes,
    "fractional_adaptive3d_pool_double": _pools,
    "stft_magnitude": _stft_magnitude,
    "fft_conv_complex": _fft_conv,
}
CASES.update(ISSUE_19_CASES)
def _square(r, k=3):  # well conditioned: a random matrix plus k on the diagonal
    return r(k, k) + k * torch.eye(k, dtype=r.dtype)


def _spd(r, k=3):  # symmetric positive definite, from a leaf
    a = r(k, k)
    return a @ a.T + k * torch.eye(k, dtype=r.dtype)


def _linalg_solves(r):
    """det, slogdet, solve (matrix, vector, right), LU (factor, unpack, solve in its four forms), Cholesky (its
    inverse and solve), triangular solves, pinv and lstsq (tall and wide)."""
    n = r.n
    out = torch.linalg.det(_square(r)) + torch.linalg.slogdet(_square(r)).logabsdet
    out = out + weighted(r, torch.linalg.solve(_square(r), r(3, n))) + weighted(r, torch.linalg.solve(_square(r), r(3)))
    out = out + weighted(r, torch.linalg.solve(_square(r), r(n, 3), left=False))
    lu, piv = torch.linalg.lu_factor(_square(r))
    out = out + weighted(r, lu)
    _, lo, up = torch.linalg.lu(r(3, n + 1))
    out = out + weighted(r, lo) + weighted(r, up)
    lu2, piv2 = torch.linalg.lu_factor(r(n + 1, 3))
    _, lo2, up2 = torch.lu_unpack(lu2, piv2)
    out = out + weighted(r, lo2) + weighted(r, up2)
    lu3, piv3 = torch.linalg.lu_factor(_square(r))
    for left in (True, False):
        for adjoint in (False, True):
            b = r(3, n) if left else r(n, 3)
            out = out + weighted(r, torch.linalg.lu_solve(lu3, piv3, b, left=left, adjoint=adjoint))
    chol = torch.linalg.cholesky(_spd(r))
    out = out + weighted(r, chol) + weighted(r, torch.linalg.cholesky_ex(_spd(r), upper=True).L)
    out = out + weighted(r, torch.cholesky_inverse(chol)) + weighted(r, torch.cholesky_solve(r(3, n), chol))
    tri = torch.triu(_square(r))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*deprecated.*", UserWarning)  # the old names, still their own nodes
        if hasattr(torch._C._functions, "CholeskyBackward0"):  # torch.cholesky, removed in torch 2.14
            out = out + weighted(r, torch.cholesky(_spd(r)))
        out = out + weighted(r, torch.cholesky_inverse(chol.mT, upper=True))
        out = out + weighted(r, torch.triangular_solve(r(3, n), tri).solution)
        out = out + weighted(r, torch.triangular_solve(r(3, n), tri.mT, upper=False, transpose=True,
                                                       unitriangular=True).solution)
    out = out + weighted(r, torch.linalg.solve_triangular(tri, r(3, n), upper=True))
    out = out + weighted(r, torch.linalg.solve_triangular(tri.mT, r(n, 3), upper=False, left=False, unitriangular=True))
    out = out + weighted(r, torch.linalg.pinv(r(n + 2, 3))) + weighted(r, torch.linalg.pinv(r(2, n + 2)))
    out = out + weighted(r, torch.linalg.lstsq(r(n + 3, 3), r(n + 3, 2)).solution)
    return out + weighted(r, torch.linalg.lstsq(r(2, n + 2), r(2, 1), driver="gelsd").solution)


def _linalg_decompositions(r):
    """svd (reduced and full, tall and wide), svdvals, eigh, eigvalsh, qr (tall, wide, square complete)."""
    n = r.n
    out = 0
    for shape in ((n + 2, 3), (2, n + 2)):
        u, s, vh = torch.linalg.svd(r(*shape), full_matrices=False)
        out = out + weighted(r, u) + weighted(r, s) + weighted(r, vh)
        q, rr = torch.linalg.qr(r(*shape))
        out = out + weighted(r, q) + weighted(r, rr)
    u, s, vh = torch.linalg.svd(r(3, 3), full_matrices=True)
    out = out + weighted(r, u) + weighted(r, s) + weighted(r, vh) + weighted(r, torch.linalg.svdvals(r(n + 1, 3)))
    a = r(3, 3)
    lam, v = torch.linalg.eigh(a + a.T)
    b = r(4, 4)
    q, rr = torch.linalg.qr(r(3, 3), mode="complete")
    return out + weighted(r, lam) + weighted(r, v) + weighted(r, torch.linalg.eigvalsh(b + b.T)) + weighted(
        r, q) + weighted(r, rr)


def _more_reductions(r):
    x = r(r.n, 4)
    out = x.median() + x.nanmedian() + weighted(r, x.nanmedian(1).values) + weighted(r, torch.sort(x, dim=1, stable=True)[0])
    v, m = torch.var_mean(r(r.n, 4), 1)
    sd, m2 = torch.std_mean(r(r.n, 4), correction=0)
    out = out + weighted(r, v) + weighted(r, m) + sd * 2 + m2 + torch.nansum(r(r.n, 3)) + torch.nanmean(r(r.n, 3), 0).sum()
    mn, mx = torch.aminmax(r(r.n, 4), dim=1)
    mn2, mx2 = torch.aminmax(r(r.n, 4))
    out = out + weighted(r, mn) + weighted(r, mx) + mn2 * 2 + mx2 + weighted(r, torch.logcumsumexp(r(r.n, 4), 1))
    out = out + weighted(r, torch.renorm(r(r.n, 3, 2), 2, 1, 0.8)) + weighted(r, torch.renorm(r(r.n, 3), 1, 0, 1.5))
    tgt = torch.tensor([[3, 0, -1, 1], [1, 2, 3, -1], [-1, 0, 0, 0]][: r.n] + [[0, 1, -1, 2]] * max(0, r.n - 3))
    out = out + F.multilabel_margin_loss(r(r.n, 4), tgt) + weighted(r, F.multilabel_margin_loss(
        r(r.n, 4), tgt, reduction="none"))
    rm, rv = torch.zeros(3, dtype=r.dtype), torch.ones(3, dtype=r.dtype)
    out = out + weighted(r, torch.ops.aten._native_batch_norm_legit(r(r.n + 2, 3, 2), r(3), r(3), rm.clone(),
                                                                     rv.clone(), True, 0.1, 1e-5)[0])
    return out + weighted(r, torch.ops.aten._batch_norm_with_update(r(r.n + 2, 3, 2), r(3), r(3), rm.clone(),
                                                                    rv.clone(), 0.1, 1e-5)[0])


CASES.update({
    "linalg_solves": _linalg_solves,
    "linalg_decompositions": _linalg_decompositions,
    "linalg_products_bilinear": lambda r: weighted(r, torch.addmv(r(3), r(3, r.n), r(r.n), beta=0.5, alpha=2.0)
                                                   + torch.addr(r(3, 1), r(3), r(1)) + torch.addbmm(
        r(3, 1), r(r.n, 3, 2), r(r.n, 2, 1), alpha=0.5)[:, 0]) + torch.vdot(r(4), r(4)) + weighted(
        r, F.bilinear(r(r.n, 3), r(r.n, 2), r(4, 3, 2), r(4))),
    "more_reductions_losses": _more_reductions,
})



def _linalg_more(r):
    """matrix_exp, eig and eigvals (a real loss of their complex outputs, phase-invariant in the eigenvectors),
    householder_product and ormqr (random reflectors: not unitary)."""
    n = r.n
    out = weighted(r, torch.linalg.matrix_exp(0.5 * r(2, n, n)))
    lam, v = torch.linalg.eig(r(n + 1, n + 1))
    out = out + weighted(r, lam.real) + weighted(r, v.abs()) + weighted(r, torch.linalg.eigvals(r(n, n)).imag)
    out = out + weighted(r, torch.linalg.householder_product(r(n + 2, 2), r(2)))
    out = out + weighted(r, torch.ormqr(r(n + 2, 2), r(2), r(n + 2, 3)))
    return out + weighted(r, torch.ormqr(r(n + 2, 3), r(3), r(2, n + 2), left=False, transpose=True))


CASES["linalg_more"] = _linalg_more


def _linalg_torch214(r):
    """linalg.matrix_sqrth (a batch of symmetric positive-definite matrices) and linalg.polar (tall and square, a
    batch; both outputs), well conditioned whatever r.n: ops of torch 2.14 (tests/test_rules_torch214.py)."""
    n = r.n
    a = r(2, n, n)
    out = weighted(r, torch.linalg.matrix_sqrth(a @ a.mT + n * torch.eye(n, dtype=r.dtype)))
    u, h = torch.linalg.polar(r(2, n + 2, n) + (2 * n + 2) * torch.eye(n + 2, n, dtype=r.dtype))
    out = out + weighted(r, u) + weighted(r, h)
    return out + weighted(r, torch.linalg.polar(r(n, n) + 2 * n * torch.eye(n, dtype=r.dtype)).U)


if hasattr(torch.linalg, "matrix_sqrth") and hasattr(torch.linalg, "polar"):  # torch >= 2.14
    CASES["linalg_torch214"] = _linalg_torch214


def _grid_sample(r):  # grid values ~ N(0, 1): inside and outside [-1, 1]
    out = 0
    for mode, pad, align in (("bilinear", "zeros", False), ("bilinear", "border", True),
                             ("nearest", "reflection", False), ("bicubic", "reflection", True),
                             ("bicubic", "zeros", False)):
        out = out + weighted(r, F.grid_sample(r(1, 2, 3, 4), r(1, r.n, 2, 2), mode=mode, padding_mode=pad,
                                              align_corners=align))
    out = out + weighted(r, torch._grid_sampler_2d_cpu_fallback(  # the scalar 2-d kernel (float32 only)
        r(1, 2, 3, 4).float(), r(1, 2, r.n, 2).float(), 2, 1, False).to(r.dtype))
    return out + weighted(r, F.grid_sample(r(1, 1, 2, 3, 2), r(1, 2, r.n, 1, 3), padding_mode="reflection",
                                           align_corners=False))


CASES.update({
    "grid_sample": _grid_sample,
    "segment_reduce": lambda r: sum(weighted(r, torch.segment_reduce(
        r(2, 6, 2), red, lengths=torch.tensor([[2, 0, 3, 1], [1, 2, 2, 1]]), axis=1)) for red in ("sum", "mean", "max"))
        + weighted(r, torch.segment_reduce(r(5, 3, positive=True), "prod", offsets=torch.tensor([0, 2, 2, 5]))),
    "ctc_loss": lambda r: F.ctc_loss(r(7, 2, 4).log_softmax(2), torch.tensor([[1, 2, 2], [3, 1, 1]]),
                                     torch.tensor([7, 6]), torch.tensor([3, 2]))
        + torch.ops.aten._ctc_loss.Tensor(r(5, 2, 3).log_softmax(2), torch.tensor([1, 2, 2]), torch.tensor([5, 4]),
                                          torch.tensor([1, 2]), 0, False)[0].sum(),
    "upsample_antialias": lambda r: weighted(r, F.interpolate(r(1, 2, 5, 6), size=(3, 4), mode="bilinear",
                                                              antialias=True))
        + weighted(r, F.interpolate(r(1, 1, 7, 5), size=(2, r.n + 5), mode="bicubic", antialias=True,
                                    align_corners=True))
        + weighted(r, F.interpolate(r(1, 2, 8, 5), size=(3, 7), mode="lanczos", antialias=True)),
})

# Where PyTorch's own backward is wrong (its gradient test expects a failure): the mirror must report a mismatch.
TORCH_WRONG = {
    "as_strided_scatter": lambda r: weighted(r, torch.as_strided_scatter(r(3, 3) * 1, r(2, 2), (2, 2), (1, 2), 1)),
}
COMPLEX_CASES = {"stft_magnitude", "fft_conv_complex", "linalg_more"}  # scalar mode leaves their complex nodes unmirrored (Values are real)

# Node types the catalogue must produce (the issue's coverage list).
EXPECTED_TYPES = {
    "AddmmBackward0", "MmBackward0", "BmmBackward0", "TBackward0", "ReluBackward0", "TanhBackward0",
    "SigmoidBackward0", "GeluBackward0", "LeakyReluBackward0", "MulBackward0", "NativeBatchNormBackward0",
    "NativeLayerNormBackward0", "ViewBackward0", "UnsafeViewBackward0", "CloneBackward0", "NllLossBackward0",
    "LogSoftmaxBackward0", "MseLossBackward0", "SoftmaxBackward0", "LogsumexpBackward0", "EmbeddingBackward0",
    "ConvolutionBackward0", "MaxPool2DWithIndicesBackward0", "AvgPool2DBackward0", "MeanBackward0",
    "MeanBackward1", "SumBackward0", "SumBackward1", "PowBackward0", "PowBackward1", "PowBackward2", "ExpBackward0",
    "LogBackward0", "SqrtBackward0", "AbsBackward0", "NegBackward0", "AddBackward0", "SubBackward0",
    "DivBackward0", "RsubBackward1", "TransposeBackward0", "PermuteBackward0", "ExpandBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "UnsqueezeBackward0", "SelectBackward0", "SliceBackward0",
    "IndexBackward0", "CatBackward0", "StackBackward0", "SplitBackward0", "SplitWithSizesBackward0",
    "WhereBackward0", "ClampBackward1", "ClampMinBackward0", "MaxBackward0", "MaxBackward1", "AmaxBackward0",
    "MaskedFillBackward0", "FlipBackward0", "ReciprocalBackward0", "MvBackward0", "DotBackward0",
}
