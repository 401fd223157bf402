"""A zoo of small real-world-style models (CPU, seconds): ``ZOO[name](dtype) -> (loss, params)``.

``build(name, variant)`` builds one in a variant: "float64", "float32", "bfloat16", "float16" (the model in
that dtype) or "autocast" (a float32 model run under ``torch.autocast("cpu", torch.bfloat16)``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from autogradlens.examples import makemore as _makemore

VARIANTS = ("float64", "float32", "bfloat16", "float16", "autocast")


def _ce(logits, n_classes, gen=None):
    return F.cross_entropy(logits, torch.arange(logits.shape[0]) % n_classes)


def _x(dtype, *shape):
    return torch.randn(*shape).to(dtype)


# ----------------------------------------------------------------------------- convolutional classifiers

class BasicBlock(nn.Module):  # ResNet
    def __init__(self, c=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=True), nn.BatchNorm2d(c)  # bias before BN
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 1, stride=2, bias=False), nn.BatchNorm2d(2 * c))
        self.conv3 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * c, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(h)) + x)
        x = torch.relu(self.conv3(x) + self.down(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet_block(dtype):
    m = BasicBlock().to(dtype).train()
    return _ce(m(_x(dtype, 2, 4, 8, 8)), 3), m


class SE(nn.Module):
    def __init__(self, c, r, act, gate):
        super().__init__()
        self.fc1, self.fc2, self.act, self.gate = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1), act, gate

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


def mobilenet(dtype):  # MobileNetV3-style: depthwise separable conv, hardswish, squeeze-excite with hardsigmoid
    m = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
                      nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
                      SE(8, 4, nn.ReLU(), nn.Hardsigmoid()),
                      nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU6(),
                      nn.AdaptiveMaxPool2d((2, 2)), nn.Flatten(), nn.Linear(24, 3)).to(dtype).train()
    return _ce(m(_x(dtype, 2, 3, 10, 10)), 3), m


class MBConv(nn.Module):  # EfficientNet
    def __init__(self, c=4, e=4):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, c * e, 1, bias=False), nn.BatchNorm2d(c * e), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e, bias=False),
                                nn.BatchNorm2d(c * e), nn.SiLU())
        self.se = SE(c * e, 2, nn.SiLU(), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(c * e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = x + F.dropout(self.project(self.se(self.dw(self.expand(x)))), 0.2, self.training)
        return self.head(x.mean((2, 3)))


def mbconv(dtype):
    m = MBConv().to(dtype).train()
    return _ce(m(_x(dtype, 2, 4, 6, 6)), 3), m


class ConvNeXtBlock(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm, self.pw1, self.pw2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(1e-1 * torch.ones(c))
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        h = self.dw(x).permute(0, 2, 3, 1)  # channels last
        h = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(h))))
        x = x + h.permute(0, 3, 1, 2)
        return self.head(x.mean((-2, -1)))


def convnext(dtype):
    m = ConvNeXtBlock().to(dtype)
    return _ce(m(_x(dtype, 2, 8, 7, 7)), 3), m


def groupnorm(dtype):  # conv with bias before GroupNorm / InstanceNorm
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                      nn.Conv2d(8, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.ReLU(),
                      nn.Conv2d(4, 4, 3), nn.GroupNorm(1, 4), nn.GELU(),
                      nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).to(dtype)
    return _ce(m(_x(dtype, 2, 3, 6, 6)), 3), m


def audio1d(dtype):
    m = nn.Sequential(nn.Conv1d(1, 4, 9, stride=4, padding=4), nn.BatchNorm1d(4), nn.ReLU(),
                      nn.Conv1d(4, 8, 3, dilation=2, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                      nn.Conv1d(8, 8, 3, groups=2, padding=1), nn.GELU(),
                      nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3)).to(dtype)
    return _ce(m(_x(dtype, 2, 1, 64)), 3), m


def conv3d(dtype):
    m = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2)), nn.GroupNorm(2, 4), nn.ReLU(),
                      nn.Conv3d(4, 4, (1, 3, 3), groups=4, dilation=(1, 2, 1)), nn.ReLU(),
                      nn.ConvTranspose3d(4, 2, 2, stride=2), nn.Flatten(), nn.Linear(2 * 8 * 4 * 8, 3)).to(dtype)
    return _ce(m(_x(dtype, 2, 2, 4, 12, 12)), 3), m


# ----------------------------------------------------------------------------- decoders

class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4 * 2 * 2)
        self.up1 = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(4, 4, 3, stride=2, groups=2, dilation=2)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, z):
        x = torch.relu(self.fc(z)).view(-1, 4, 2, 2)
        x = F.interpolate(torch.relu(self.up1(x)), scale_factor=2, mode="nearest")  # 8x8
        x = torch.tanh(self.up2(x))  # 19x19
        x = F.interpolate(x, size=(10, 10), mode="bilinear", align_corners=False)
        x = F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True)  # 15x15
        x = F.pixel_shuffle(self.conv(x), 2)  # 2 x 30 x 30
        return torch.sigmoid(F.pixel_unshuffle(x, 3).mean(1))


def decoder(dtype):
    m = Decoder().to(dtype)
    out = m(_x(dtype, 2, 6))
    return F.mse_loss(out, torch.rand(out.shape).to(dtype)), m


def style_transfer(dtype):  # reflection / replication padding, instance norm, ResNet-D style average pooling
    m = nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(3, 4, 5), nn.InstanceNorm2d(4, affine=True), nn.ReLU(),
                      nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                      nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                      nn.Upsample(scale_factor=2), nn.ReplicationPad2d(1), nn.Conv2d(4, 3, 3), nn.Tanh()).to(dtype)
    return F.mse_loss(m(_x(dtype, 1, 3, 7, 7)), _x(dtype, 1, 3, 8, 8)), m


def bce(dtype):
    m = nn.Sequential(nn.Linear(5, 8), nn.Softplus(), nn.Linear(8, 3), nn.Sigmoid()).to(dtype)
    target = (torch.rand(4, 3) > 0.5).to(dtype)
    return F.binary_cross_entropy(m(_x(dtype, 4, 5)), target, weight=torch.rand(3).to(dtype)), m


# ----------------------------------------------------------------------------- sequence models

class EmbBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.mean = nn.EmbeddingBag(20, 6, mode="mean")
        self.sum = nn.EmbeddingBag(20, 6, mode="sum", padding_idx=0)
        self.max = nn.EmbeddingBag(20, 6, mode="max")
        self.head = nn.Linear(18, 3)

    def forward(self, idx, offsets, w):
        h = torch.cat([self.mean(idx, offsets), self.sum(idx, offsets, per_sample_weights=w),
                       self.max(idx, offsets)], 1)
        return self.head(h)


def embedding_bag(dtype):
    m = EmbBag().to(dtype)
    idx, offsets = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9, 0, 0, 7]), torch.tensor([0, 4, 6, 9])
    return _ce(m(idx, offsets, torch.rand(11).to(dtype)), 3), m


class RNNClassifier(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.emb = nn.Embedding(10, 5)
        self.rnn = cell(5, 6, num_layers=2, batch_first=True, bidirectional=cell is nn.GRU)
        self.head = nn.Linear(6 * (2 if cell is nn.GRU else 1), 3)

    def forward(self, idx):
        out, _ = self.rnn(self.emb(idx))
        return self.head(out[:, -1])


def _rnn(cell, dtype):
    torch.manual_seed(0)
    m = RNNClassifier(cell).to(dtype)
    return _ce(m(torch.randint(0, 10, (3, 4))), 3), m


def lstm(dtype):
    return _rnn(nn.LSTM, dtype)


def gru(dtype):
    return _rnn(nn.GRU, dtype)


def rnn(dtype):
    return _rnn(nn.RNN, dtype)


class Block(nn.Module):  # ViT / GPT block with F.scaled_dot_product_attention
    def __init__(self, d, heads, causal):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads, self.causal = heads, causal

    def forward(self, x, mask=None):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh" if self.causal else "none"))


class ViT(nn.Module):
    def __init__(self, d=8, patch=4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.1)
        self.block, self.norm, self.head = Block(d, 2, causal=False), nn.LayerNorm(d), nn.Linear(d, 3)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        mask = torch.ones(5, 5, dtype=torch.bool).tril(1)  # a boolean attention mask
        x = self.block(x, mask)
        return self.head(self.norm(x)[:, 0])


def vit(dtype):
    m = ViT().to(dtype)
    return _ce(m(_x(dtype, 2, 3, 8, 8)), 3), m


class GPT(nn.Module):
    def __init__(self, vocab=11, d=8, t=6):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(t, d)
        self.block, self.ln = Block(d, 2, causal=True), nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        return self.lm_head(self.ln(self.block(x)))


def gpt(dtype):
    m = GPT().to(dtype)
    idx = torch.randint(0, 11, (2, 6))
    logits = m(idx)
    return F.cross_entropy(logits.view(-1, 11), idx.roll(-1, 1).view(-1)), m


class Llama(nn.Module):  # RMSNorm, rotary embeddings, causal SDPA, SwiGLU
    def __init__(self, d=8, heads=2, t=5):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w1, self.w2, self.w3 = nn.Linear(d, 16, bias=False), nn.Linear(16, d, bias=False), \
            nn.Linear(d, 16, bias=False)
        self.g1, self.g2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.heads, self.t = heads, t

    def rms(self, x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g

    def rope(self, x):
        hd = x.shape[-1]
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=x.dtype) / hd))
        freqs = torch.outer(torch.arange(self.t, dtype=x.dtype), inv)
        cos, sin = freqs.cos().repeat_interleave(2, -1), freqs.sin().repeat_interleave(2, -1)
        rot = torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)
        return x * cos + rot * sin

    def forward(self, x):
        b, t, d = x.shape
        h = self.rms(x, self.g1)
        q, k, v = (w(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, d))
        h = self.rms(x, self.g2)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


def llama(dtype):
    m = Llama().to(dtype)
    return m(_x(dtype, 2, 5, 8)).pow(2).mean(), m


def bert(dtype):  # nn.TransformerEncoderLayer with a key padding mask, token-type and position embeddings
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = nn.ModuleDict({"tok": nn.Embedding(20, 8), "typ": nn.Embedding(2, 8), "pos": nn.Embedding(6, 8),
                           "enc": nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation="gelu",
                                                             batch_first=True, norm_first=True),
                           "cls": nn.Linear(8, 3)}).to(dtype).train()
    idx = torch.randint(0, 20, (2, 6))
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    x = m["tok"](idx) + m["typ"](torch.zeros_like(idx)) + m["pos"](torch.arange(6))
    h = m["enc"](F.dropout(F.layer_norm(x, (8,)), 0.1), src_key_padding_mask=pad)
    return _ce(m["cls"](h[:, 0]), 3), m


def nanogpt_attention(dtype):  # attention written out: tril mask, masked_fill(-inf), softmax, dropout
    m = nn.Sequential(nn.Linear(8, 24), nn.Linear(8, 8)).to(dtype)
    q, k, v = m[0](_x(dtype, 2, 5, 8)).split(8, dim=2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / 8**0.5)
    att = att.masked_fill(torch.tril(torch.ones(5, 5)) == 0, float("-inf"))
    return m[1](F.dropout(F.softmax(att, dim=-1), 0.1) @ v).pow(2).mean(), m


class UNet(nn.Module):  # skip connection by cat, max pool, transposed conv, PReLU, Mish, per-pixel CE
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.up, self.dec = nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Conv2d(8, 2, 3, padding=1)
        self.prelu = nn.PReLU(4)

    def forward(self, x):
        e1 = self.prelu(self.enc1(x))
        e2 = F.mish(self.enc2(F.max_pool2d(e1, 2)))
        return self.dec(torch.cat([self.up(e2), e1], 1))


def unet(dtype):
    m = UNet().to(dtype)
    return F.cross_entropy(m(_x(dtype, 2, 1, 8, 8)), torch.randint(0, 2, (2, 8, 8)), ignore_index=1), m


def losses(dtype):  # the usual regression / distribution / metric losses and a few tensor ops on one pair
    a, b = (torch.randn(4, 6).to(dtype).requires_grad_() for _ in range(2))
    loss = F.smooth_l1_loss(a, b) + F.l1_loss(a, b) + F.huber_loss(a, b, delta=0.5) + F.kl_div(
        F.log_softmax(a, 1), F.softmax(b, 1), reduction="batchmean") + F.cosine_similarity(a, b).sum()
    loss = loss + F.logsigmoid(a).sum() + F.triplet_margin_loss(a, b, b.flip(0)) + F.glu(a, 1).sum()
    loss = loss + torch.roll(a, 1, 0).tril().sum() * a.erf().mean() + a.topk(2, 1).values.sum() \
        + torch.sort(b, 1).values[:, 0].exp().sum() + F.unfold(a.view(1, 1, 4, 6), 2).pow(2).sum() \
        + torch.zeros(6, 6, dtype=dtype).index_add(0, torch.tensor([0, 2, 2, 5]), a).pow(2).sum()
    return loss, {"a": a, "b": b}


def makemore(dtype):
    loss, names = _makemore(batch=8, n_hidden=16, dtype=dtype)
    return loss, {k: names[k] for k in ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias")}


# ----------------------------------------------------------------------------- training tricks

def checkpointed(dtype):  # activation checkpointing, non-reentrant
    m = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    m = m.to(dtype)
    x = _x(dtype, 4, 6)
    h = checkpoint(m[:3], x, use_reentrant=False)
    return _ce(m[3:](checkpoint(lambda z: z * torch.sigmoid(z), h, use_reentrant=False)), 3), m


def gradient_penalty(dtype):  # WGAN-GP: a loss made from a gradient (double backward)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.LayerNorm(8), nn.GELU(),
                      nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 1)).to(dtype)
    x = _x(dtype, 5, 4).requires_grad_()
    (g,) = torch.autograd.grad(m(x).sum(), x, create_graph=True)
    return ((g.norm(2, dim=1) - 1) ** 2).mean() + m(x).mean(), m


def gradient_penalty_conv(dtype):  # R1 penalty on a conv critic with BN, and an input-gradient of a CE
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 4, 3, stride=2),
                      nn.Flatten(), nn.Linear(4 * 2 * 2, 3), nn.LogSoftmax(1)).to(dtype).train()
    x = _x(dtype, 3, 2, 6, 6).requires_grad_()
    (g,) = torch.autograd.grad(F.nll_loss(m(x), torch.tensor([0, 1, 2])), x, create_graph=True)
    return g.pow(2).sum() * 10, m


def inplace_views(dtype):  # in-place ops on views (CopySlices), as_strided, transpose_
    w = torch.randn(4, 6).to(dtype).requires_grad_()
    h = w * 2
    h[0] = 0.0
    h[:, 1].mul_(3)
    h[1:3, ::2].add_(w[:2, :3].exp())
    s = h.as_strided((3, 3), (6, 1), 2)
    t = h.clone()
    t.transpose_(0, 1)
    return (s.sigmoid().sum() + (t * t).sum()), {"w": w}


def bf16_casts(dtype):  # explicit casts through bfloat16 and float16 inside a model
    m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    h = m[1](m[0](_x(dtype, 4, 5)))
    h = h.to(torch.bfloat16).to(dtype) + h.to(torch.float16).to(dtype)
    return _ce(m[2](h), 3), m


def baddbmm(dtype):
    a, b, c = (torch.randn(*s).to(dtype).requires_grad_() for s in ((2, 3, 4), (2, 4, 5), (2, 3, 5)))
    return (torch.baddbmm(c, a, b, beta=0.5, alpha=2.0).tanh().sum() + torch.baddbmm(c, a, b).sum()), \
        {"a": a, "b": b, "c": c}


# ----------------------------------------------------------------------------- rendering, routing, graphs

def nerf(dtype):  # positional encoding, density to alpha, transmittance by cumprod, colour along each ray
    mlp = nn.Sequential(nn.Linear(3 + 3 * 2 * 3, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)
    pts = torch.rand(6, 8, 3).to(dtype)
    freqs = (2.0 ** torch.arange(3)).to(dtype)
    enc = torch.cat([pts] + [f(pts[..., None] * freqs).flatten(-2) for f in (torch.sin, torch.cos)], -1)
    out = mlp(enc)
    alpha = 1 - torch.exp(-F.relu(out[..., 0]) * 0.1)
    trans = torch.cumprod(torch.cat([torch.ones(6, 1).to(dtype), 1 - alpha + 1e-6], 1), 1)[:, :-1]
    color = ((trans * alpha)[..., None] * torch.sigmoid(out[..., 1:])).sum(1)
    return F.mse_loss(color, torch.rand(6, 3).to(dtype)), mlp


class MoE(nn.Module):  # top-2 gating over 3 experts, tokens routed with index_add
    def __init__(self):
        super().__init__()
        self.gate, self.experts = nn.Linear(6, 3), nn.ModuleList(nn.Linear(6, 6) for _ in range(3))

    def forward(self, x):
        w, idx = torch.topk(F.softmax(self.gate(x), -1), 2, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, k = torch.where(idx == e)
            out = out.index_add(0, rows, (expert(x[rows]) * w[rows, k, None]).to(out.dtype))  # (autocast: bf16)
        return out


def moe(dtype):
    m = MoE().to(dtype)
    return m(_x(dtype, 10, 6)).pow(2).mean(), m


class GraphAttention(nn.Module):  # GAT: edge scores, softmax over each node's incoming edges by scatter_reduce
    def __init__(self):
        super().__init__()
        self.lin, self.att = nn.Linear(5, 8), nn.Parameter(torch.randn(16))

    def forward(self, x, src, dst):
        h = self.lin(x)
        e = F.leaky_relu((torch.cat([h[src], h[dst]], -1) * self.att).sum(-1), 0.2)
        top = torch.zeros(x.shape[0], dtype=e.dtype).scatter_reduce(0, dst, e, "amax", include_self=False)
        a = torch.exp(e - top[dst])
        a = a / torch.zeros(x.shape[0], dtype=e.dtype).index_add(0, dst, a)[dst]
        return F.elu(torch.zeros(x.shape[0], 8, dtype=e.dtype).index_add(0, dst, h[src] * a[:, None]))


def gat(dtype):
    m = GraphAttention().to(dtype)
    src, dst = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2, 1]), torch.tensor([1, 2, 3, 4, 5, 0, 3, 5, 3])
    return _ce(m(_x(dtype, 6, 5), src, dst), 8), m


ZOO = {f.__name__: f for f in (resnet_block, mobilenet, mbconv, convnext, groupnorm, audio1d, conv3d, decoder,
                               style_transfer, bce,
                               embedding_bag, lstm, gru, rnn, vit, gpt, llama, bert, nanogpt_attention, unet,
                               losses, makemore, checkpointed, gradient_penalty,
                               gradient_penalty_conv, inplace_views, bf16_casts, baddbmm, nerf, moe, gat)}
# also run under bf16 autocast for coverage
AUTOCAST = ("resnet_block", "vit", "gpt", "lstm", "decoder", "llama", "bert", "unet")


def build(name: str, variant: str = "float64", device: str = "cpu", seed: int = 0):
    """(loss, params) of ZOO[name] in a variant (see VARIANTS) on `device`; seeded, so deterministic."""
    torch.manual_seed(seed)
    if variant == "autocast":
        ctx = torch.autocast(device, dtype=torch.bfloat16)
        dtype = torch.float32
    else:
        ctx, dtype = contextlib.nullcontext(), getattr(torch, variant)
    with ctx, torch.device(device):  # tensors the model makes land on `device`
        return ZOO[name](dtype)
