"""An MLP training loop for SGD and Adam (used by the demo and the tutorials)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["History", "fit", "make_optimizer"]

DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}


@dataclass
class History:
    optimizer: str
    loss: list = field(default_factory=list)        # per step
    watch: object = None                            # the Watch, when fit(watch=True)
    train_acc: list = field(default_factory=list)   # per epoch
    test_acc: list = field(default_factory=list)    # per epoch
    seconds: float = 0.0

    @property
    def final_test_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")


def make_optimizer(name_or_opt, params, lr=None):
    if isinstance(name_or_opt, torch.optim.Optimizer):
        return name_or_opt
    name = str(name_or_opt).lower()
    if name not in DEFAULT_LR:
        raise ValueError(f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got {name_or_opt!r}")
    lr = DEFAULT_LR[name] if lr is None else lr
    return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.Adam(params, lr=lr)


@torch.no_grad()
def accuracy(model, x, y) -> float:
    was = model.training
    model.eval()
    acc = (model(x).argmax(1) == y).double().mean().item()
    model.train(was)
    return acc


def fit(model, data, optimizer="sgd", *, lr=None, epochs: int = 20, batch_size: int = 32, seed: int = 0,
        watch=False, progress: bool = True) -> History:
    """Train `model` on `data` (a :class:`autogradlens.data.Split`) with cross-entropy.

    `optimizer` is 'sgd' (lr 0.1), 'adam' (lr 1e-3) or an optimizer. With ``watch=True`` the loop
    runs inside :func:`autogradlens.watch` (``History.watch`` holds it). Returns a :class:`History`.

    Example:
        >>> from autogradlens import data, training
        >>> from autogradlens.examples import MLP
        >>> h = training.fit(MLP((64, 32, 10)), data.digits(), "adam", epochs=1, progress=False)
        >>> len(h.test_acc)
        1
    """
    if progress:  # tqdm.auto warns in notebooks without ipywidgets even when the bar is disabled
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    from .watching import watch as make_watch

    opt = make_optimizer(optimizer, model.parameters(), lr)
    name = type(opt).__name__
    hist = History(name)
    opts = watch if isinstance(watch, dict) else {}
    ctx = make_watch(model, optimizer=opt, **opts) if watch else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"{name:>4}", disable=not progress, leave=False)
    with ctx as w:
        hist.watch = w
        _loop(model, data, opt, bar, gen, batch_size, hist)
    hist.seconds = time.perf_counter() - t0
    return hist


def _loop(model, data, opt, bar, gen, batch_size, hist):
    n = len(data.x_train)
    for _ in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.loss.append(loss.item())
        hist.train_acc.append(accuracy(model, data.x_train, data.y_train))
        hist.test_acc.append(accuracy(model, data.x_test, data.y_test))
        bar.set_postfix(loss=f"{hist.loss[-1]:.3f}", test_acc=f"{hist.test_acc[-1]:.3f}")

