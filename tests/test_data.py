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


@pytest.mark.parametrize("test_size", [1.5, 1.0, 0.0, -0.5, 1e-6, 0.99999])
def test_digits_test_size_strictly_between_0_and_1(test_size):
    with pytest.raises(ValueError, match="test_size"):
        data.digits(test_size=test_size)


def test_digits_other_arguments():
    d = data.digits(test_size=0.5, seed=3)
    assert len(d.x_test) in (898, 899) and len(d.x_train) + len(d.x_test) == 1797
    assert not torch.equal(d.x_train[:5], data.digits(test_size=0.5, seed=4).x_train[:5])
    with pytest.raises(TypeError, match="test_size must be a fraction"):
        data.digits(test_size="0.25")
    with pytest.raises(TypeError, match="seed must be an int"):
        data.digits(seed=1.5)


def test_truncated_header_and_huge_dimensions(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(bytes([0, 0, 8, 3]) + b"\0\0\0\2")  # three sizes announced, one given
    with pytest.raises(ValueError, match="truncated header: 3 dimensions need 16 bytes, the file has 8"):
        data.read_idx(p)
    p.write_bytes(bytes([0, 0, 8, 3]) + b"\xff\xff\xff\xff" * 3 + b"\0" * 10)  # 2^96 bytes promised
    with pytest.raises(ValueError, match="truncated: the header says"):
        data.read_idx(p)


def test_mnist_argument_and_layout_errors(tmp_path):
    fake_mnist(tmp_path)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        data.mnist(tmp_path, limit=0)
    with pytest.raises(TypeError, match="limit must be an int"):
        data.mnist(tmp_path, limit=2.5)
    with pytest.raises(FileNotFoundError, match="it is a file"):
        data.mnist(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        data.read_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes((tmp_path / "t10k-images-idx3-ubyte").read_bytes())
    with pytest.raises(ValueError, match="swapped"):
        data.mnist(tmp_path)


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_mnist_names_the_damaged_file(tmp_path, damage):
    fake_mnist(tmp_path)
    p = tmp_path / "train-labels-idx1-ubyte"
    raw = p.read_bytes()
    p.write_bytes(b"PK\x03\x04" + raw[4:] if damage == "magic" else raw[:-3])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: (wrong magic|truncated)"):
        data.mnist(tmp_path)
