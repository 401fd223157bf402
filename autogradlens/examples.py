"""Small programs used by the demo, the tutorials and the CLI (`autogradlens trace autogradlens.examples:neuron`).

Each returns ``(root, params)``: the output tensor and a name -> tensor mapping for its leaves.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
            raise ValueError(f"act must be one of {sorted(acts)}, got {act!r}")
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
