"""A zoo of small models; each builder returns (loss, params) with params an nn.Module or a dict."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.k = k
        return x**3 * k

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2 * ctx.k, None


def saved_storages(build):
    """The direct measurement: {storage pointer: bytes} of every tensor packed while build() runs."""
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = build()
    return storages, out


def mlp_ce(dtype=torch.float64):
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(dtype)
    return F.cross_entropy(m(torch.randn(6, 4, dtype=dtype)), torch.randint(0, 3, (6,))), m


def mlp_mse(dtype=torch.float64):
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)
    return F.mse_loss(m(torch.randn(5, 4, dtype=dtype)), torch.randn(5, 2, dtype=dtype)), m


def dropout(dtype=torch.float64):
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 2)).to(dtype).train()
    return m(torch.randn(7, 4, dtype=dtype)).pow(2).mean(), m


def batchnorm(dtype=torch.float64):
    m = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).to(dtype).train()
    return F.cross_entropy(m(torch.randn(8, 4, dtype=dtype)), torch.randint(0, 3, (8,))), m


def layernorm(dtype=torch.float64):
    m = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3)).to(dtype)
    return F.cross_entropy(m(torch.randn(8, 4, dtype=dtype)), torch.randint(0, 3, (8,))), m


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + torch.tanh(self.shared(h))
        h = h + torch.tanh(self.shared(h))  # the same weights used twice
        return self.out(h)


def residual(dtype=torch.float64):
    m = Residual().to(dtype)
    return m(torch.randn(5, 4, dtype=dtype)).sum(), m


def linear3d(dtype=torch.float64):
    m = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 2)).to(dtype)
    return m(torch.randn(2, 3, 4, dtype=dtype)).abs().sum(), m


class Attention(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        att = torch.softmax(q @ k.transpose(-2, -1) / k.shape[-1] ** 0.5, dim=-1)
        return att @ v


def attention(dtype=torch.float64):
    m = Attention().to(dtype)
    return m(torch.randn(2, 5, 6, dtype=dtype)).pow(2).mean(), m


def embedding(dtype=torch.float64):
    m = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 3)).to(dtype)
    idx = torch.tensor([[1, 2, 1], [0, 9, 9]])
    return F.cross_entropy(m(idx), torch.tensor([0, 2])), m


def conv(dtype=torch.float64):
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(3 * 4 * 4, 4)).to(dtype)
    return F.cross_entropy(m(torch.randn(2, 1, 8, 8, dtype=dtype)), torch.tensor([1, 3])), m


def custom(dtype=torch.float64):
    w = torch.randn(3, dtype=dtype, requires_grad=True)
    return Cube.apply(w, 2.0).sum(), {"w": w}


def inplace(dtype=torch.float64):
    w = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    h = w * 2
    h.add_(1)
    h[0] = 0.0  # in-place on a view -> CopySlices
    h[:, 1].mul_(3)
    return (h * h).sum(), {"w": w}


def encoder(width: int, heads: int, ff: int, layers: int) -> nn.TransformerEncoder:
    """nn.TransformerEncoder of `layers` batch-first layers (dropout 0.1), without its nested-tensor warning."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.TransformerEncoder(nn.TransformerEncoderLayer(width, heads, ff, dropout=0.1, batch_first=True),
                                     layers, enable_nested_tensor=False)


def transformer(dtype=torch.float64):
    m = encoder(8, 2, 16, 1).to(dtype).train()
    return m(torch.randn(2, 4, 8, dtype=dtype)).pow(2).mean(), m


MODELS = {f.__name__: f for f in (transformer, mlp_ce, mlp_mse, dropout, batchnorm, layernorm, residual, linear3d,
                                  attention, embedding, conv, custom, inplace)}
