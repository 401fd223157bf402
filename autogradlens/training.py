"""An MLP training loop for SGD and Adam (used by the demo and the tutorials)."""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import LensTypeError, LensValueError

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
    """An optimizer from a name ('sgd': lr 0.1, 'adam': lr 1e-3), or `name_or_opt` itself when it is one.

    Raises:
        LensValueError: an unknown name, a non-positive `lr`, or `lr` given with an optimizer object.
        LensTypeError: neither a name nor a ``torch.optim.Optimizer`` (e.g. the class itself).

    Example:
        >>> import torch
        >>> from autogradlens.training import make_optimizer
        >>> type(make_optimizer("adam", [torch.zeros(2, requires_grad=True)])).__name__
        'Adam'
    """
    if isinstance(name_or_opt, torch.optim.Optimizer):
        if lr is not None:
            raise LensValueError("lr is for optimizer names ('sgd', 'adam'); this optimizer already has its own "
                                 "learning rate: leave lr out")
        return name_or_opt
    if isinstance(name_or_opt, type) and issubclass(name_or_opt, torch.optim.Optimizer):
        raise LensTypeError(f"optimizer is the class {name_or_opt.__name__}, not an optimizer: pass "
                            f"{name_or_opt.__name__}(model.parameters(), lr=...) or a name, 'sgd' or 'adam'")
    if not isinstance(name_or_opt, str):
        raise LensTypeError(f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got "
                            f"{type(name_or_opt).__name__}")
    name = name_or_opt.lower()
    if name not in DEFAULT_LR:
        raise LensValueError(f"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer, got {name_or_opt!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real)):
        raise LensTypeError(f"lr must be a number, got {type(lr).__name__}")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise LensValueError(f"lr must be a positive number (e.g. {DEFAULT_LR[name]} for {name}), got {lr}")
    lr = DEFAULT_LR[name] if lr is None else lr
    return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.Adam(params, lr=lr)


def _positive_int(name: str, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise LensTypeError(f"{name} must be an int, got {type(v).__name__} {v!r:.40}")
    if v < 1:
        raise LensValueError(f"{name} must be at least 1, got {v}")


def _check_data(data):
    parts = ("x_train", "y_train", "x_test", "y_test")
    if not all(isinstance(getattr(data, k, None), torch.Tensor) for k in parts):
        raise LensTypeError(f"data must be a Split (lens.data.digits(), lens.data.mnist(path)) or an object with "
                            f"tensors {', '.join(parts)}; got {type(data).__name__}")
    for side in ("train", "test"):
        x, y = getattr(data, "x_" + side), getattr(data, "y_" + side)
        if x.ndim < 2 or not x.is_floating_point():
            raise LensValueError(f"data.x_{side} must be floating-point inputs of shape (N, features...), got "
                                 f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}")
        if y.ndim != 1 or y.dtype != torch.int64:
            raise LensValueError(f"data.y_{side} must be int64 class labels of shape (N,), got "
                                 f"{str(y.dtype).removeprefix('torch.')} {tuple(y.shape)}")
        if len(x) != len(y) or len(x) == 0:
            raise LensValueError(f"data.x_{side} has {len(x)} rows and data.y_{side} {len(y)}: they must be equal "
                                 "and not zero")


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
    runs inside :func:`autogradlens.watch` (``History.watch`` holds it; a dict passes its options).
    Returns a :class:`History`.

    Raises:
        LensTypeError: `model` is not an ``nn.Module``, `data` has no train/test tensors, or an argument
            has the wrong type.
        LensValueError: `epochs` or `batch_size` below 1, a non-positive `lr`, an unknown optimizer name,
            or inputs and labels of different lengths or the wrong shape.

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

    if not isinstance(model, torch.nn.Module):
        raise LensTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_data(data)
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise LensTypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer) and not any(p.requires_grad for p in model.parameters()):
        raise LensValueError(f"{type(model).__name__} has no parameters that require grad: nothing to train")
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

