import gzip
import struct

import numpy as np
import pytest
import torch

from autogradlens import data


def write_idx(path, arr, type_code=0x08, gz=False, truncate=0, magic=None):
    arr = np.asarray(arr)
    head = magic if magic is not None else bytes([0, 0, type_code, arr.ndim])
    raw = head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1" if type_code == 0x08 else ">i4").tobytes()
    if truncate:
        raw = raw[:-truncate]
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(root, n_train=12, n_test=5, gz=False, labels_train=None):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 4, 4)), gz=gz)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", labels_train if labels_train is not None
              else rng.integers(0, 10, n_train), gz=gz)
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 4, 4)), gz=gz)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test), gz=gz)
    return root


def test_digits_offline_split_and_normalised():
    d = data.digits()
    assert d.x_train.shape == (1348, 64) and d.x_test.shape == (449, 64) and d.shape == (8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.n_classes == 10
    assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert torch.equal(data.digits().x_train, d.x_train)  # deterministic


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader_raw_and_gz(tmp_path, gz):
    fake_mnist(tmp_path, gz=gz)
    m = data.mnist(tmp_path)
    assert m.x_train.shape == (12, 16) and m.x_test.shape == (5, 16) and m.shape == (4, 4)
    raw = data.read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    assert raw.shape == (12, 4, 4) and raw.dtype == np.uint8
    assert data.mnist(tmp_path, limit=3).x_train.shape == (3, 16)


def test_idx_int32(tmp_path):
    p = write_idx(tmp_path / "x.idx", np.arange(6).reshape(2, 3) - 3, type_code=0x0C)
    assert data.read_idx(p).tolist() == [[-3, -2, -1], [0, 1, 2]]


@pytest.mark.parametrize("kind,msg", [
    ("magic", "wrong magic number"),
    ("truncated", "truncated"),
    ("empty", "wrong magic number"),
    ("badgz", "broken gzip"),
])
def test_bad_idx_files(tmp_path, kind, msg):
    p = tmp_path / "bad.idx"
    if kind == "magic":
        write_idx(p, np.zeros((2, 2)), magic=b"\x12\x34\x08\x02")
    elif kind == "truncated":
        write_idx(p, np.zeros((3, 4, 4)), truncate=5)
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        p.write_bytes(b"\x1f\x8b" + b"nonsense")
    with pytest.raises(ValueError, match=msg):
        data.read_idx(p)


def test_mnist_mismatched_counts_and_missing(tmp_path):
    fake_mnist(tmp_path, labels_train=np.zeros(11))
    with pytest.raises(ValueError, match="12 images but 11 labels"):
        data.mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="MNIST folder not found"):
        data.mnist(tmp_path / "nope")
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        data.mnist(tmp_path)
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "missing")
