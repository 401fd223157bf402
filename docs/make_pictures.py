"""Write the README's pictures into docs/ (run from the repository root: python docs/make_pictures.py).

Each is drawn as a notebook shows it: fitted to an 828 px column (the layout, the saved-tensor notes and the
collapse chosen so that its text stays readable there).

neuron.svg       the lecture's neuron with tanh written with exp, as lens.Values: label | data | grad (draw_dot)
mlp_grads.svg    an MLP step traced with grads=True: the gradient on every node, coloured by log magnitude
grad_flow.png    gradient flow per layer of a deep sigmoid MLP, without and with BatchNorm
transformer.svg  a 2-layer nn.TransformerEncoder (no lens.modules): blocks collapse into boxes titled by class
fallback.png     the matplotlib drawing used when Graphviz's `dot` is not installed
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import autogradlens as lens
from autogradlens import plots, render
from autogradlens.demo import lecture_neuron
from autogradlens.examples import MLP

OUT = Path(__file__).parent


def deep(norm: bool, depth: int = 8, width: int = 64):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        nn.init.normal_(lin.weight, std=1.0 / width**0.5)
        layers += [lin] + ([nn.BatchNorm1d(width)] if norm else []) + [nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))



def fitted(drawable, name: str, **opts) -> None:
    f = render.fit(drawable, render.COLUMN, **opts)
    (OUT / name).write_text(f.svg, encoding="utf-8")
    print(f"{name}: {f}")


def main():
    fitted(lens.trace(lecture_neuron(exp=True)), "neuron.svg")

    torch.manual_seed(0)
    model = MLP((64, 16, 10))
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    fitted(lens.trace(F.cross_entropy(model(x), y), params=model, grads=True), "mlp_grads.svg")

    torch.manual_seed(1)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    traces = {name: lens.trace(F.cross_entropy(m(x), y), params=m, grads=True)
              for name, m in (("no normalisation", deep(False)), ("BatchNorm", deep(True)))}
    (OUT / "grad_flow.png").write_bytes(plots.png(plots.gradient_flow(traces), 100, plots.COLUMN)[0])

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True), 2,
                                    enable_nested_tensor=False)
    loss = enc(torch.randn(2, 4, 8)).pow(2).mean()  # no lens.modules: modules inferred from the parameters
    fitted(lens.trace(loss, params=enc), "transformer.svg")

    torch.manual_seed(0)
    small = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    t = lens.trace(F.cross_entropy(small(torch.randn(6, 4)), torch.randint(0, 3, (6,))), params=small)
    render.spec_to_matplotlib(render.trace_spec(t)).savefig(OUT / "fallback.png", dpi=80, bbox_inches="tight")
    for p in sorted(OUT.glob("*.*")):
        if p.suffix in (".svg", ".png"):
            print(f"{p}  {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
