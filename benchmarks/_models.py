"""Real-model layouts for the mirror benchmark, written out so that no torchvision or transformers is needed.

- ``resnet18()``: torchvision's ResNet-18 (``torchvision.models.resnet18()``: 7x7/2 stem without bias, BatchNorm,
  3x3/2 max pool, four stages of two BasicBlocks with 1x1/2 downsampling, adaptive average pool, 1000-way fc),
  in training mode, batch 2 at 224x224, cross-entropy loss;
- ``gpt2()``: a GPT-2 model in the layout of transformers' ``GPT2LMHeadModel`` (4 layers, 256 wide, 4 heads,
  2 x 64 tokens, GPT-2's vocabulary of 50,257 tokens, training mode with its 0.1 dropouts): ``Conv1D`` layers
  (``addmm`` on a flattened input, weight stored in x out), the fused ``c_attn`` split into heads, eager
  attention (``matmul``, scaling by a full tensor, the causal mask by ``where`` with the dtype's minimum,
  softmax, dropout), ``gelu_new`` (the tanh approximation), pre-LayerNorm blocks, the language-model head tied
  to the token embedding, shifted cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu(out, inplace=True)


class ResNet18(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(batch=2, size=224):
    """(loss function, model): a new batch on every call."""
    m = ResNet18().train()
    return lambda: F.cross_entropy(m(torch.randn(batch, 3, size, size)), torch.randint(0, 1000, (batch,))), m


class Conv1D(nn.Module):  # transformers.pytorch_utils.Conv1D
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


def gelu_new(x):  # transformers.activations.NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Attention(nn.Module):  # GPT2Attention, eager path
    def __init__(self, d, heads, ctx, p):
        super().__init__()
        self.heads, self.d = heads, d
        self.c_attn, self.c_proj = Conv1D(3 * d, d), Conv1D(d, d)
        self.attn_dropout, self.resid_dropout = nn.Dropout(p), nn.Dropout(p)
        self.register_buffer("bias", torch.tril(torch.ones(ctx, ctx, dtype=torch.bool)).view(1, 1, ctx, ctx),
                             persistent=False)

    def _split(self, x):
        return x.view(x.size()[:-1] + (self.heads, self.d // self.heads)).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(self.d, dim=2)
        q, k, v = self._split(q), self._split(k), self._split(v)
        w = torch.matmul(q, k.transpose(-1, -2))
        w = w / torch.full([], v.size(-1) ** 0.5, dtype=w.dtype, device=w.device)
        t = q.size(-2)
        mask = self.bias[:, :, :t, :t]
        w = torch.where(mask, w.to(w.dtype), torch.full([], torch.finfo(w.dtype).min, dtype=w.dtype))
        w = self.attn_dropout(F.softmax(w, dim=-1).type(v.dtype))
        y = torch.matmul(w, v).permute(0, 2, 1, 3).contiguous()
        y = y.view(y.size()[:-2] + (self.d,))
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, d, p):
        super().__init__()
        self.c_fc, self.c_proj, self.dropout = Conv1D(4 * d, d), Conv1D(d, 4 * d), nn.Dropout(p)

    def forward(self, x):
        return self.dropout(self.c_proj(gelu_new(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, d, heads, ctx, p):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d, eps=1e-5), Attention(d, heads, ctx, p)
        self.ln_2, self.mlp = nn.LayerNorm(d, eps=1e-5), MLP(d, p)

    def forward(self, x):
        x = self.attn(self.ln_1(x)) + x
        return self.mlp(self.ln_2(x)) + x


class GPT2(nn.Module):
    def __init__(self, vocab=50257, d=256, layers=4, heads=4, ctx=1024, p=0.1):
        super().__init__()
        self.wte, self.wpe, self.drop = nn.Embedding(vocab, d), nn.Embedding(ctx, d), nn.Dropout(p)
        self.h = nn.ModuleList(GPT2Block(d, heads, ctx, p) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT2LMHeadModel ties them

    def forward(self, idx):
        pos = torch.arange(idx.size(-1)).unsqueeze(0)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        shift = logits[..., :-1, :].contiguous()
        return F.cross_entropy(shift.view(-1, shift.size(-1)), idx[..., 1:].contiguous().view(-1))


def gpt2(batch=2, tokens=64, vocab=50257):
    """(loss function, model): a new batch of tokens on every call."""
    m = GPT2(vocab=vocab).train()
    return lambda: m(torch.randint(0, vocab, (batch, tokens))), m
