"""Which node types real models produce, and how many of them the mirror has a rule for.

    python benchmarks/coverage.py
"""

from __future__ import annotations

import collections
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens
from autogradlens.examples import MLP, lecture_expression, neuron, neuron_formula
from autogradlens.rules import RULES


def models():
    torch.manual_seed(0)
    yield "lecture neuron", *neuron()
    yield "neuron, tanh as formula", *neuron_formula()
    yield "lecture expression", *lecture_expression()
    m = MLP((64, 32, 10))
    yield "digits MLP + CE", F.cross_entropy(m(torch.randn(16, 64)), torch.randint(0, 10, (16,))), m
    m = MLP((64, 32, 32, 10), act="gelu", dropout=0.2, batchnorm=True).train()
    yield "MLP, BN, GELU, dropout", F.cross_entropy(m(torch.randn(16, 64)), torch.randint(0, 10, (16,))), m
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 10))
    yield "small CNN", F.cross_entropy(cnn(torch.randn(4, 1, 8, 8)), torch.randint(0, 10, (4,))), cnn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True), 2,
                                    enable_nested_tensor=False)
    yield "transformer encoder x2", enc(torch.randn(2, 6, 32)).pow(2).mean(), enc
    emb, head = nn.Embedding(50, 16), nn.Linear(16, 50)
    idx = torch.randint(0, 50, (4, 8))
    logits = head(torch.tanh(emb(idx)).mean(1))
    yield "bag-of-embeddings classifier", F.cross_entropy(logits, idx[:, 0], label_smoothing=0.1), \
        nn.ModuleDict({"emb": emb, "head": head})


def main():
    types, nodes, covered_nodes = collections.Counter(), 0, 0
    print(f"{'model':30s} {'nodes':>6s} {'types':>6s} {'with rule':>10s}  mirror")
    for name, loss, params in models():
        t = lens.trace(loss, params=params)
        ops = [d["type"] for _, d in t.graph.nodes(data=True) if not d["is_leaf"]]
        kinds = set(ops)
        types.update(kinds)
        nodes += len(ops)
        covered_nodes += sum(o in RULES for o in ops)
        ok = lens.mirror(loss, params=params, mode="tensor").ok
        ruled = sum(k in RULES for k in kinds)
        print(f"{name:30s} {len(ops):6d} {len(kinds):6d} {ruled:10d}  {'ok' if ok else 'NOT OK'}")
    seen = sorted(types)
    with_rule = [t for t in seen if t in RULES]
    print(f"\n{len(with_rule)}/{len(seen)} node types seen have a rule ({covered_nodes}/{nodes} op nodes); "
          f"without: {sorted(set(seen) - set(with_rule)) or 'none'}")
    print(f"rules: {len(RULES)} node types: {', '.join(sorted(RULES))}")


if __name__ == "__main__":
    main()
