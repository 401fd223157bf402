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
    loss, names, _, _ = _makemore(batch, n_embd, n_hidden, block_size, vocab_size, seed, dtype, retain_grad)
    return loss, names


def _makemore(batch, n_embd, n_hidden, block_size, vocab_size, seed, dtype, retain_grad):
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
    return loss, {**params, **inter}, Xb, Yb


# The lecture's cmp order: the gradients of its Exercise 1, loss side first.
MAKEMORE_GRADS = ("logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes",
                  "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw", "bnvar_inv", "bnvar", "bndiff2",
                  "bndiff", "bnmeani", "hprebn", "embcat", "W1", "b1", "emb", "C")
MAKEMORE_BUGS = ("sign", "broadcast", "one_path", "scale", "transpose")


def makemore_backward(names: dict, Xb, Yb, bug: str | None = None) -> dict:
    """Exercise 1 of makemore part 4 solved by hand, line by line as the lecture does (``dlogprobs``, ...,
    ``dC``): ``{name: gradient}``. `bug` plants one of the mistakes learners make: "sign" (dlogprobs),
    "broadcast" (dcounts_sum_inv without its sum), "one_path" (dcounts without ``+= dcounts_sum``), "scale"
    (1/n for 1/(n-1) in dbndiff2) or "transpose" (dW1)."""
    if bug is not None and bug not in MAKEMORE_BUGS:
        raise LensValueError(f"bug must be one of {MAKEMORE_BUGS} or None, got {bug!r}")
    (logprobs, probs, counts, counts_sum, counts_sum_inv, logits, h, bnraw, bnvar_inv, bnvar, bndiff2, bndiff, hprebn,
     embcat, emb, C, W1, W2, bngain) = (names[k].detach() for k in (
        "logprobs", "probs", "counts", "counts_sum", "counts_sum_inv", "logits", "h", "bnraw", "bnvar_inv", "bnvar",
        "bndiff2", "bndiff", "hprebn", "embcat", "emb", "C", "W1", "W2", "bngain"))
    n = Xb.shape[0]
    dlogprobs = torch.zeros_like(logprobs)
    dlogprobs[range(n), Yb] = (1.0 if bug == "sign" else -1.0) / n
    dprobs = (1.0 / probs) * dlogprobs
    dcounts_sum_inv = counts * dprobs if bug == "broadcast" else (counts * dprobs).sum(1, keepdim=True)
    dcounts = counts_sum_inv * dprobs
    dcounts_sum = (-counts_sum**-2) * dcounts_sum_inv
    if bug != "one_path":
        dcounts += torch.ones_like(counts) * dcounts_sum
    dnorm_logits = counts * dcounts
    dlogits = dnorm_logits.clone()
    dlogit_maxes = (-dnorm_logits).sum(1, keepdim=True)
    dlogits += F.one_hot(logits.max(1).indices, num_classes=logits.shape[1]) * dlogit_maxes
    dh = dlogits @ W2.T
    dW2 = h.T @ dlogits
    db2 = dlogits.sum(0)
    dhpreact = (1.0 - h**2) * dh
    dbngain = (bnraw * dhpreact).sum(0, keepdim=True)
    dbnraw = bngain * dhpreact
    dbnbias = dhpreact.sum(0, keepdim=True)
    dbndiff = bnvar_inv * dbnraw
    dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)
    dbnvar = (-0.5 * (bnvar + 1e-5) ** -1.5) * dbnvar_inv
    dbndiff2 = (1.0 / (n if bug == "scale" else n - 1)) * torch.ones_like(bndiff2) * dbnvar
    dbndiff += (2 * bndiff) * dbndiff2
    dhprebn = dbndiff.clone()
    dbnmeani = (-dbndiff).sum(0)
    dhprebn += 1.0 / n * (torch.ones_like(hprebn) * dbnmeani)
    dembcat = dhprebn @ W1.T
    dW1 = dhprebn.T @ embcat if bug == "transpose" else embcat.T @ dhprebn
    db1 = dhprebn.sum(0)
    demb = dembcat.view(emb.shape)
    dC = torch.zeros_like(C)
    dC.index_put_((Xb.reshape(-1),), demb.reshape(-1, demb.shape[-1]), accumulate=True)
    d = locals()
    return {k: d["d" + k] for k in MAKEMORE_GRADS}


def makemore_exercise(bug: str | None = None, *, batch: int = 32, dtype=torch.float32, backward: bool = True,
                      seed: int = 2147483647):
    """Makemore part 4's Exercise 1 as a learner hands it in: ``(loss, grads, names)`` for ``lens.check(loss, grads,
    params=names)`` (or ``autogradlens check autogradlens.examples:makemore_exercise``). The intermediates call
    ``retain_grad()`` and ``loss.backward()`` runs first, as in the lecture (``backward=False``: not yet)."""
    loss, names, Xb, Yb = _makemore(batch, 10, 64, 3, 27, seed, dtype, True)
    if backward:
        loss.backward()
    return loss, makemore_backward(names, Xb, Yb, bug), names


def makemore_exercise_with_a_bug():
    """The exercise with one path of two missing (``dcounts`` without ``+= dcounts_sum``): for the command line."""
    return makemore_exercise("one_path")
