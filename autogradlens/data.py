"""Data sets for the demo and tutorials: scikit-learn's bundled 8x8 digits (offline), real MNIST IDX files.

Both return a :class:`Split` of float32 image tensors (N, H*W), scaled to [0, 1] then standardised
with the training set's mean and std, and int64 labels.
"""

from __future__ import annotations

import gzip
import math
import numbers
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import LensFileNotFoundError, LensTypeError, LensValueError

__all__ = ["Split", "digits", "mnist", "read_idx"]


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shape: tuple  # image shape, e.g. (8, 8)

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return int(self.y_train.max()) + 1

    def __repr__(self) -> str:
        return (f"Split(train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"image={self.shape}, classes={self.n_classes})")


def _standardise(xtr: np.ndarray, xte: np.ndarray):
    mean, std = xtr.mean(), xtr.std() + 1e-8
    return (torch.tensor((xtr - mean) / std, dtype=torch.float32),
            torch.tensor((xte - mean) / std, dtype=torch.float32))


def _check_int(name: str, v, low: int, allow_none: bool = False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise LensTypeError(f"{name} must be an int, got {type(v).__name__} {v!r:.40}")
    if v < low:
        raise LensValueError(f"{name} must be at least {low}, got {v}")


def digits(test_size: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's 1,797 handwritten 8x8 digits (ships with the package: no network).

    `test_size` is the fraction held out for testing, strictly between 0 and 1; `seed` picks the shuffle.

    Raises:
        LensTypeError: `test_size` is not a number or `seed` not an int.
        LensValueError: `test_size` is not strictly between 0 and 1, or leaves a side empty.

    Example:
        >>> from autogradlens import data
        >>> d = data.digits()
        >>> d.x_train.shape[1], d.n_classes
        (64, 10)
    """
    from sklearn.datasets import load_digits

    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise LensTypeError(f"test_size must be a fraction between 0 and 1 (e.g. 0.25), got "
                            f"{type(test_size).__name__} {test_size!r:.40}")
    if not 0 < test_size < 1:
        raise LensValueError(f"test_size must be strictly between 0 and 1 (the fraction of images held out "
                             f"for testing, e.g. 0.25), got {test_size}")
    _check_int("seed", seed, 0)
    x, y = load_digits(return_X_y=True)
    n_test = int(round(len(x) * test_size))
    if not 0 < n_test < len(x):
        raise LensValueError(f"test_size={test_size} leaves no {'test' if n_test == 0 else 'training'} images "
                             f"out of {len(x)}; use a fraction between {1 / len(x):.4f} and {1 - 1 / len(x):.4f}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    te, tr = idx[:n_test], idx[n_test:]
    xtr, xte = _standardise(x[tr] / 16.0, x[te] / 16.0)
    return Split(xtr, torch.tensor(y[tr]), xte, torch.tensor(y[te]), (8, 8))


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (raw or .gz), as used by MNIST.

    Raises:
        LensFileNotFoundError: no file at `path`.
        LensValueError: not an IDX file (wrong magic number, broken gzip, truncated header or data).
    """
    path = Path(path)
    if not path.is_file():
        raise LensFileNotFoundError(f"IDX file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise LensValueError(f"{path.name}: broken gzip data ({e}); download the file again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise LensValueError(f"{path.name}: wrong magic number {raw[:4].hex() or '(empty)'}; an IDX file starts "
                         "with 00 00 <type> <ndim> (MNIST images: 00000803, labels: 00000801)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise LensValueError(f"{path.name}: truncated header: {ndim} dimensions need {4 + 4 * ndim} bytes, "
                             f"the file has {len(raw)}; download the file again")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    n = math.prod(dims) if dims else 0
    body = raw[4 + 4 * ndim :]
    if len(body) < n * dtype.itemsize:
        raise LensValueError(f"{path.name}: truncated: the header says {dims} ({n * dtype.itemsize} bytes of data), "
                             f"the file has {len(body)}; download the file again")
    return np.frombuffer(body, dtype=dtype, count=n).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    raise LensFileNotFoundError(f"no {stem}[.gz] in {root}; MNIST needs train-images-idx3-ubyte, "
                                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (raw or .gz)")


def mnist(path, limit: int | None = None) -> Split:
    """Real MNIST from the four IDX files (raw or .gz) in the folder `path` (never downloads).

    `limit` keeps the first `limit` images of each split (None: all).

    Raises:
        LensFileNotFoundError: the folder or one of the four files is missing.
        LensValueError: a damaged file (wrong magic number, truncated) or images and labels that disagree.
        LensTypeError: `limit` is not an int.
    """
    root = Path(path)
    _check_int("limit", limit, 1, allow_none=True)
    if not root.is_dir():
        raise LensFileNotFoundError(f"MNIST folder not found: {root}" + (" (it is a file; give the folder that "
                                    "holds the four IDX files)" if root.exists() else ""))
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        y = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1:
            raise LensValueError(f"{split}: expected images (N, H, W) and labels (N,), got {x.shape} and {y.shape}; "
                                 "are the image and label files swapped?")
        if len(x) != len(y):
            raise LensValueError(f"{split}: {len(x)} images but {len(y)} labels; the files come from different "
                                 "sets or one is cut short")
        if limit is not None:
            x, y = x[:limit], y[:limit]
        parts[split] = (x.reshape(len(x), -1) / 255.0, y.astype(np.int64))
        shape = tuple(int(s) for s in x.shape[1:])
    xtr, xte = _standardise(parts["train"][0], parts["test"][0])
    return Split(xtr, torch.tensor(parts["train"][1]), xte, torch.tensor(parts["test"][1]), shape)
