"""Karpathy's makemore part 4 exercise ("becoming a backprop ninja"), as the lecture notebook writes it: the forward
pass chunked into the lecture's names, and Exercise 1's manual backward, line by line, with a bug planted on
request (the kinds lens.check diagnoses). Offline: random characters instead of names.txt."""

import torch
import torch.nn.functional as F

BUGS = ("sign", "broadcast", "one_path", "scale", "transpose")


def forward(dtype=torch.float32, batch=32, seed=2147483647, retain=True):
    vocab_size, block_size, n_embd, n_hidden = 27, 3, 10, 64
    g = torch.Generator().manual_seed(seed)
    C = torch.randn((vocab_size, n_embd), generator=g)
    W1 = torch.randn((n_embd * block_size, n_hidden), generator=g) * (5 / 3) / ((n_embd * block_size) ** 0.5)
    b1 = torch.randn(n_hidden, generator=g) * 0.1
    W2 = torch.randn((n_hidden, vocab_size), generator=g) * 0.1
    b2 = torch.randn(vocab_size, generator=g) * 0.1
    bngain = torch.randn((1, n_hidden), generator=g) * 0.1 + 1.0
    bnbias = torch.randn((1, n_hidden), generator=g) * 0.1
    parameters = [C, W1, b1, W2, b2, bngain, bnbias]
    C, W1, b1, W2, b2, bngain, bnbias = [p.to(dtype).requires_grad_() for p in parameters]
    n = batch
    Xb = torch.randint(0, vocab_size, (n, block_size), generator=g)
    Yb = torch.randint(0, vocab_size, (n,), generator=g)

    emb = C[Xb]
    embcat = emb.view(emb.shape[0], -1)
    hprebn = embcat @ W1 + b1
    bnmeani = 1 / n * hprebn.sum(0, keepdim=True)
    bndiff = hprebn - bnmeani
    bndiff2 = bndiff**2
    bnvar = 1 / (n - 1) * (bndiff2).sum(0, keepdim=True)
    bnvar_inv = (bnvar + 1e-5) ** -0.5
    bnraw = bndiff * bnvar_inv
    hpreact = bngain * bnraw + bnbias
    h = torch.tanh(hpreact)
    logits = h @ W2 + b2
    logit_maxes = logits.max(1, keepdim=True).values
    norm_logits = logits - logit_maxes
    counts = norm_logits.exp()
    counts_sum = counts.sum(1, keepdims=True)
    counts_sum_inv = counts_sum**-1
    probs = counts * counts_sum_inv
    logprobs = probs.log()
    loss = -logprobs[range(n), Yb].mean()
    t = {k: v for k, v in locals().items() if isinstance(v, torch.Tensor) and v.requires_grad and k != "loss"}
    if retain:
        for k, v in t.items():
            if v.grad_fn is not None:
                v.retain_grad()
    return loss, t, Xb, Yb


def backward(t, Xb, Yb, bug=None):
    """Exercise 1, as the lecture solves it; `bug` plants one mistake. Returns {name: dname}."""
    (logprobs, probs, counts, counts_sum, counts_sum_inv, norm_logits, logit_maxes, logits, h, hpreact, bnraw,
     bnvar_inv, bnvar, bndiff2, bndiff, hprebn, bnmeani, embcat, emb, C, W1, b1, W2, b2, bngain, bnbias) = (
        t[k].detach() for k in ("logprobs", "probs", "counts", "counts_sum", "counts_sum_inv", "norm_logits",
                                "logit_maxes", "logits", "h", "hpreact", "bnraw", "bnvar_inv", "bnvar", "bndiff2",
                                "bndiff", "hprebn", "bnmeani", "embcat", "emb", "C", "W1", "b1", "W2", "b2",
                                "bngain", "bnbias"))
    n = Xb.shape[0]
    dlogprobs = torch.zeros_like(logprobs)
    dlogprobs[range(n), Yb] = -1.0 / n
    if bug == "sign":
        dlogprobs[range(n), Yb] = 1.0 / n
    dprobs = (1.0 / probs) * dlogprobs
    dcounts_sum_inv = (counts * dprobs).sum(1, keepdim=True)
    if bug == "broadcast":
        dcounts_sum_inv = counts * dprobs  # the sum over the broadcast dim forgotten
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
    dbndiff2 = (1.0 / (n - 1)) * torch.ones_like(bndiff2) * dbnvar
    if bug == "scale":
        dbndiff2 = (1.0 / n) * torch.ones_like(bndiff2) * dbnvar
    dbndiff += (2 * bndiff) * dbndiff2
    dhprebn = dbndiff.clone()
    dbnmeani = (-dbndiff).sum(0)
    dhprebn += 1.0 / n * (torch.ones_like(hprebn) * dbnmeani)
    dembcat = dhprebn @ W1.T
    dW1 = embcat.T @ dhprebn
    if bug == "transpose":
        dW1 = dhprebn.T @ embcat
    db1 = dhprebn.sum(0)
    demb = dembcat.view(emb.shape)
    dC = torch.zeros_like(C)
    for k in range(Xb.shape[0]):
        for j in range(Xb.shape[1]):
            ix = Xb[k, j]
            dC[ix] += demb[k, j]
    d = locals()
    return {k: d["d" + k] for k in ("logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits",
                                    "logit_maxes", "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw",
                                    "bnvar_inv", "bnvar", "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "W1",
                                    "b1", "emb", "C")}
