"""Attention (the CPU flash kernel) and the fused CPU LSTM layer."""

from __future__ import annotations

import math

import numpy as np

from .table import Unsupported, rule


@rule("ScaledDotProductFlashAttentionForCpuBackward0")
def _sdpa(c):
    """The flash-attention backward, as PyTorch's CPU kernel computes it: the probabilities from the saved
    logsumexp (p = exp(s - lse), no second normalisation) and the row term D = sum(dO * O) from the saved
    output (equal to sum(dP * P), but with terms |dO||O| instead of |dO||V||P|)."""
    q, k, v = c.s["query"], c.s["key"], c.s["value"]
    if c.a.get("dropout_p", 0.0):
        raise Unsupported("attention with dropout: the dropout mask is not saved")
    scale = c.a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    s = np.einsum("...le,...se->...ls", q, k) * scale
    allowed = np.ones(s.shape, dtype=bool)
    mask = c.s.get("attn_mask") if "attn_mask" in c.s else c.s.get("attn_bias")
    if mask is not None:
        if mask.dtype == bool:
            allowed = allowed & np.broadcast_to(mask, s.shape)
        else:
            s = s + mask
            allowed = allowed & np.isfinite(np.broadcast_to(mask, s.shape))
    if c.a.get("is_causal"):
        allowed = allowed & np.tril(np.ones(s.shape[-2:], dtype=bool))
    lse, out, go = c.s["logsumexp"][..., None], c.s["output"], c.g
    live = np.isfinite(lse)  # a fully masked row (lse = -inf) gives zeros, as the fused kernel does
    p = np.where(allowed & live, np.exp(np.where(allowed, s, 0.0) - np.where(live, lse, 0.0)), 0.0)
    dp = np.einsum("...le,...se->...ls", go, v)
    d = (go * out).sum(axis=-1, keepdims=True)
    dv = np.einsum("...ls,...le->...se", p, go)
    ds = p * (dp - d)
    dq = np.einsum("...ls,...se->...le", ds, k) * scale
    dk = np.einsum("...ls,...le->...se", ds, q) * scale
    return (dq, dk, dv)


def _sig(z):
    return 1 / (1 + np.exp(-z))


@rule("MkldnnRnnLayerBackward0")
def _mkldnn_lstm(c):
    """One LSTM layer and direction (gates i, f, g, o): the gates are recomputed in float64 from the saved input,
    weights, initial state and PyTorch's own hidden states (result0), then back-propagated through time."""
    if c.a["mode"] != 2:
        raise Unsupported("the fused RNN layer in a mode other than LSTM")
    x, wih, whh, h0, c0, hs = (c.s[k] for k in ("input", "weight0", "weight1", "hx_", "cx_", "result0"))
    bias = c.s["weight2"] + c.s["weight3"] if c.a["has_biases"] else 0.0
    steps, batch, hid = hs.shape[0], hs.shape[1], c.a["hidden_size"]
    order = list(range(steps))[::-1] if c.a["reverse"] else list(range(steps))
    h_prev, c_prev, gates, cs = {}, {}, {}, {}
    h, cell = h0, c0
    for t in order:  # forward, keeping what the backward needs
        z = x[t] @ wih.T + h @ whh.T + bias
        i, f, gg, o = _sig(z[:, :hid]), _sig(z[:, hid:2 * hid]), np.tanh(z[:, 2 * hid:3 * hid]), _sig(z[:, 3 * hid:])
        h_prev[t], c_prev[t] = h, cell
        cell = f * cell + i * gg
        gates[t], cs[t] = (i, f, gg, o), cell
        h = hs[t]
    g_out, g_hy, g_cy = (list(c.gs) + [None] * 3)[:3]
    dh = c.zeros((batch, hid)) if g_hy is None else g_hy
    dc = c.zeros((batch, hid)) if g_cy is None else g_cy
    dxs, dwih, dwhh, db = [None] * steps, None, None, None
    for t in order[::-1]:
        i, f, gg, o = gates[t]
        if g_out is not None:
            dh = dh + g_out[t]
        tc = np.tanh(cs[t])
        dc = dc + dh * (o * (1 - tc * tc))
        dz = np.concatenate([dc * (gg * i * (1 - i)), dc * (c_prev[t] * f * (1 - f)), dc * (i * (1 - gg * gg)),
                             dh * (tc * o * (1 - o))], axis=1)
        dxs[t] = dz @ wih
        dh, dc = dz @ whh, dc * f
        dwih = dz.T @ x[t] if dwih is None else dwih + dz.T @ x[t]
        dwhh = dz.T @ h_prev[t] if dwhh is None else dwhh + dz.T @ h_prev[t]
        db = dz.sum(axis=0) if db is None else db + dz.sum(axis=0)
    has_b = c.a["has_biases"]
    return (np.stack(dxs), dwih, dwhh, db if has_b else None, db if has_b else None, dh, dc)
