"""Small programs used by the demo, the tutorials and the CLI (`autogradlens trace autogradlens.examples:neuron`).

Each returns ``(root, params)``: the output tensor and a name -> tensor mapping for its leaves.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import LensValueError

# The neuron from the micrograd lecture: o = tanh(x1*w1 + x2*w2 + b).
NEURON = {"x1": 2.0, "x2": 0.0, "w1": -3.0, "w2": 1.0, "b": 6.8813735870195432}


def _neuron_leaves(dtype=torch.float64) -> dict:
    return {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in NEURON.items()}


def neuron(dtype=torch.float64):
    """The lecture neuron with ``torch.tanh``: o = 0.7071."""
    p = _neuron_leaves(dtype)
    n = p["x1"] * p["w1"] + p["x2"] * p["w2"] + p["b"]
    return torch.tanh(n), p


def neuron_formula(dtype=torch.float64):
    """The same neuron with tanh written out as (e^{2n} - 1) / (e^{2n} + 1)."""
    p = _neuron_leaves(dtype)
    n = p["x1"] * p["w1"] + p["x2"] * p["w2"] + p["b"]
    e = (2 * n).exp()
    return (e - 1) / (e + 1), p


def lecture_expression():
    """The expression from the lecture (a=-4, b=2): g = 24.7041."""
    a = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    c = a + b
    d = a * b + b**3
    c = c + c + 1
    c = c + 1 + c + (-a)
    d = d + d * 2 + (b + a).relu()
    d = d + 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    g = g + 10.0 / f
    return g, {"a": a, "b": b}


class MLP(nn.Module):
    """A plain multilayer perceptron: Linear -> activation -> ... -> Linear (logits)."""

    def __init__(self, sizes=(64, 32, 10), act: str = "relu", dropout: float = 0.0, batchnorm: bool = False):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
        if act not in acts:
            raise LensValueError(f"act must be one of {sorted(acts)}, got {act!r}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                if batchnorm:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(acts[act]())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


def mlp_loss(batch: int = 16, sizes=(64, 32, 10), act: str = "relu", seed: int = 0, dtype=torch.float32):
    """One cross-entropy loss of an MLP on a digits-shaped random batch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP(sizes, act).to(dtype)
    x = torch.randn(batch, sizes[0], generator=g, dtype=dtype)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    return F.cross_entropy(model(x), y), model


# Karpathy's makemore part 4 ("becoming a backprop ninja"): the names of its intermediates, in forward order.
MAKEMORE_NAMES = ("emb", "embcat", "hprebn", "bnmeani", "bndiff", "bndiff2", "bnvar", "bnvar_inv", "bnraw",
                  "hpreact", "h", "logits", "logit_maxes", "norm_logits", "counts", "counts_sum",
                  "counts_sum_inv", "probs", "logprobs")


def makemore(batch: int = 32, *, n_embd: int = 10, n_hidden: int = 64, block_size: int = 3, vocab_size: int = 27,
             seed: int = 42, dtype=torch.float32, retain_grad: bool = False):
    """The makemore part 4 network, written out op by op as in the lecture, on random characters (offline).

    Returns ``(loss, names)``: ``names`` maps the lecture's names (``C``, ``W1``, ..., ``emb``, ``hprebn``,
    ``bnvar_inv``, ``logprobs``, ...) to the parameters and intermediate tensors, ready for
    ``lens.mirror(loss, params=names)``. ``retain_grad=True`` calls ``retain_grad()`` on every intermediate,
    as the lecture does.
    """
    g = torch.Generator().manual_seed(seed)
    C = torch.randn((vocab_size, n_embd), generator=g)
    W1 = torch.randn((n_embd * block_size, n_hidden), generator=g) * (5 / 3) / ((n_embd * block_size) ** 0.5)
    b1 = torch.randn(n_hidden, generator=g) * 0.1
    W2 = torch.randn((n_hidden, vocab_size), generator=g) * 0.1
    b2 = torch.randn(vocab_size, generator=g) * 0.1
    bngain = torch.randn((1, n_hidden), generator=g) * 0.1 + 1.0
    bnbias = torch.randn((1, n_hidden), generator=g) * 0.1
    params = {"C": C, "W1": W1, "b1": b1, "W2": W2, "b2": b2, "bngain": bngain, "bnbias": bnbias}
    for k, p in params.items():
        params[k] = p.to(dtype).requires_grad_()
    C, W1, b1, W2, b2, bngain, bnbias = params.values()
    Xb = torch.randint(0, vocab_size, (batch, block_size), generator=g)
    Yb = torch.randint(0, vocab_size, (batch,), generator=g)
    n = batch
    emb = C[Xb]
    embcat = emb.view(emb.shape[0], -1)
    hprebn = embcat @ W1 + b1
    bnmeani = 1 / n * hprebn.sum(0, keepdim=True)
    bndiff = hprebn - bnmeani
    bndiff2 = bndiff**2
    bnvar = 1 / (n - 1) * bndiff2.sum(0, keepdim=True)
    bnvar_inv = (bnvar + 1e-5) ** -0.5
    bnraw = bndiff * bnvar_inv
    hpreact = bngain * bnraw + bnbias
    h = torch.tanh(hpreact)
    logits = h @ W2 + b2
    logit_maxes = logits.max(1, keepdim=True).values
    norm_logits = logits - logit_maxes
    counts = norm_logits.exp()
    counts_sum = counts.sum(1, keepdim=True)
    counts_sum_inv = counts_sum**-1
    probs = counts * counts_sum_inv
    logprobs = probs.log()
    loss = -logprobs[range(n), Yb].mean()
    local = locals()
    inter = {k: local[k] for k in MAKEMORE_NAMES}
    if retain_grad:
        for t in inter.values():
            t.retain_grad()
    return loss, {**params, **inter}
