"""The pictures learners look at, as the lectures and real models make them: each builder returns the object a
notebook cell would end on (a Trace, a MirrorReport)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from models import encoder

import autogradlens as lens
from autogradlens import Value
from autogradlens.examples import makemore


def lecture_expression():
    """The micrograd lecture's first expression, labelled as in the lecture, after backward()."""
    L = lecture_values(Value)["L"]
    L.backward()
    return lens.trace(L)


def lecture_values(V):
    """The micrograd lecture's first expression L = (a*b + c) * f as Values of class `V` (lens's or micrograd's),
    labelled, by label; nothing computed backward."""
    def v(label, x):
        out = V(x)
        out.label = label
        return out
    a, b, c, f = v("a", 2.0), v("b", -3.0), v("c", 10.0), v("f", -2.0)
    e = a * b
    e.label = "e"
    d = e + c
    d.label = "d"
    L = d * f
    L.label = "L"
    return {k: x for k, x in zip("abcdefL", (a, b, c, d, e, f, L))}


def by_hand(vs, **wrong):
    """Set the lecture's gradients by hand on lecture_values(), some of them `wrong`."""
    grads = {"L": 1.0, "f": 4.0, "d": -2.0, "c": -2.0, "e": -2.0, "a": 6.0, "b": -4.0}  # the lecture's
    grads.update(wrong)
    for k, g in grads.items():
        vs[k].grad = g


def lecture_neuron_exp():
    """The lecture's neuron with tanh written with exp, exactly as in the lecture's notebook."""
    from autogradlens.demo import lecture_neuron as neuron
    return lens.trace(neuron(exp=True))


def lecture_neuron():
    from autogradlens.demo import lecture_neuron as neuron
    return lens.trace(neuron())


def deep_bn_mlp(depth: int = 8, width: int = 64):
    """Tutorial 16's deep Linear + BatchNorm + sigmoid stack, traced with gradients."""
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.Sigmoid()]
    m = nn.Sequential(*layers, nn.Linear(width, 10))
    x, y = torch.randn(128, width), torch.randint(0, 10, (128,))
    return lens.trace(F.cross_entropy(m(x), y), params=m, grads=True)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same attribute names)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision's resnet18 layout (conv1, bn1, maxpool, layer1-4 of two BasicBlocks, avgpool, fc), with
    its module names; `width` scales the channels (64 in torchvision)."""

    def __init__(self, width: int = 64, classes: int = 1000):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [w, 2 * w, 4 * w, 8 * w]
        cin = w
        for i, c in enumerate(chans):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c)))
            cin = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(width: int = 16):
    torch.manual_seed(0)
    m = ResNet(width, classes=10)
    x = torch.randn(2, 3, 32, 32)
    return F.cross_entropy(m(x), torch.tensor([1, 7])), m


def resnet18_trace():
    loss, m = resnet18()
    return lens.trace(loss, params=m, grads=True)


def resnet18_mirror():
    loss, m = resnet18()
    return lens.mirror(loss, params=m)


def transformer2():
    """A 2-layer transformer encoder, traced without lens.modules (modules inferred from the parameters)."""
    torch.manual_seed(0)
    m = encoder(32, 4, 64, 2)
    return lens.trace(m(torch.randn(2, 6, 32)).pow(2).mean(), params=m)


def makemore_trace():
    """makemore part 4's network with the lecture's names (``logprobs``, ``hpreact``, ``bnvar_inv``, ...)."""
    loss, names = makemore()
    return lens.trace(loss, params=names, grads=True)


CASES = {f.__name__: f for f in (lecture_expression, lecture_neuron, lecture_neuron_exp, deep_bn_mlp,
                                 resnet18_trace, resnet18_mirror, transformer2, makemore_trace)}
