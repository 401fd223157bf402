import gc
import io

import numpy as np
import pytest
import torch

import autogradlens as lens
from autogradlens import Value
from autogradlens.errors import LensValueError
from autogradlens.examples import makemore
from autogradlens.mirror import scalar


def test_as_values_and_floats_round_trip():
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    v = scalar.as_values(a)
    assert v.dtype == object and v.shape == (2, 3) and all(isinstance(x, Value) and x._prev == () for x in v.flat)
    assert all(type(x.data) is float for x in v.flat)  # Python floats: micrograd's arithmetic, not numpy's
    assert np.array_equal(scalar.floats(v), a.astype(np.float64))
    mixed = np.array([Value(1.5), 0.0, 2], dtype=object)  # rules fill zeros with plain numbers
    assert scalar.floats(mixed).tolist() == [1.5, 0.0, 2.0]
    assert scalar.floats(np.float32([1, 2])).dtype == np.float64
    assert scalar.as_values(np.zeros((0, 3))).shape == (0, 3) and scalar.as_values(np.float64(2.0)).shape == ()


def test_choose_mode_says_which_and_why():
    assert scalar.choose_mode("auto", 100)[0] == "scalar"
    mode, why = scalar.choose_mode("auto", 524_908)
    assert mode == "tensor" and "auto chose tensor mode" in why and "524,908" in why and "mode='scalar'" in why
    mode, why = scalar.choose_mode("scalar", 1_000_000)  # the capacity the makemore network needs
    assert mode == "scalar" and "1,000,000" in why
    assert scalar.choose_mode("tensor", 10)[0] == "tensor"
    with pytest.raises(LensValueError, match="use mode='tensor'"):
        scalar.choose_mode("scalar", scalar.SCALAR_LIMIT + 1)
    with pytest.raises(ValueError, match="'auto', 'scalar' or 'tensor'"):
        scalar.choose_mode("fast", 1)
    assert scalar.SCALAR_LIMIT >= 1_000_000


def test_running_pauses_the_collector_and_restores_it_also_on_exceptions():
    assert gc.isenabled()
    with pytest.raises(KeyError), scalar.running(5, True) as tick:
        assert not gc.isenabled()
        tick()
        raise KeyError("a rule failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with scalar.running(5, True):
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()
    with scalar.running(5, False) as tick:  # tensor mode: nothing changes
        assert gc.isenabled()
        tick()


def test_progress_bar_only_on_a_terminal_outside_tests(monkeypatch):
    made = []

    class FakeBar:
        def __init__(self, **kw):
            made.append(kw)
            self.n = 0

        def update(self, n=1):
            self.n += n

        def close(self):
            made.append("closed")

    import tqdm
    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    with scalar.running(3, True) as tick:  # under pytest: no bar
        tick()
    assert made == []

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    with scalar.running(3, True) as tick:
        for _ in range(3):
            tick()
    assert made[0]["total"] == 3 and made[0]["delay"] == 1.0 and made[-1] == "closed"
    made.clear()
    with pytest.raises(RuntimeError), scalar.running(3, True):
        raise RuntimeError("boom")
    assert made[-1] == "closed" and gc.isenabled()


def test_scalar_cost_counts_matmul_work():
    loss, names = makemore(batch=4)
    from types import SimpleNamespace as N
    mm = N(type="MmBackward0", in_shapes=[(4, 30), (30, 64)], out_shapes=[(4, 64)])
    add = N(type="AddBackward0", in_shapes=[(4, 64), (64,)], out_shapes=[(4, 64)])
    assert scalar.scalar_cost([mm]) == 2 * (4 * 64 + 4 * 30 + 30 * 64 + 4 * (4 * 64) * 30)
    assert scalar.scalar_cost([add]) == 2 * (256 + 256 + 64)
    assert scalar.scalar_cost([N(type="X", in_shapes=[None], out_shapes=[(2,)])]) == 4


def rows(r):
    return [(x["id"], x["name"], x["status"]) for x in r.rows]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_makemore_mirrors_in_scalar_mode_with_tensor_mode_verdicts(dtype):
    # Karpathy's makemore part 4 network: every scalar of its backward a Value, the same verdicts as tensor mode
    loss, names = makemore(batch=4, dtype=dtype)
    s = lens.mirror(loss, params=names, mode="scalar")
    loss, names = makemore(batch=4, dtype=dtype)
    t = lens.mirror(loss, params=names, mode="tensor")
    assert s.ok and t.ok and s.mode == "scalar" and t.mode == "tensor"
    assert rows(s) == rows(t) and len(rows(s)) > 30
    assert not any(r["status"] == "unmirrored" for r in s.rows)


def test_scalar_mode_catches_a_changed_gradient():
    # the same network with one gradient changed by a hook: scalar mode says where, as tensor mode does
    loss, names = makemore(batch=4, dtype=torch.float64)
    names["h"].register_hook(lambda g: g * (1 + 1e-6))
    s = lens.mirror(loss, params=names, mode="scalar")
    loss, names = makemore(batch=4, dtype=torch.float64)
    names["h"].register_hook(lambda g: g * (1 + 1e-6))
    t = lens.mirror(loss, params=names, mode="tensor")
    assert not s.ok and not t.ok
    assert rows(s) == rows(t)


def test_values_at_zero_in_scalar_mode_match_pytorch():
    w = torch.tensor([0.0, 4.0, 0.0], dtype=torch.float64, requires_grad=True)
    for f in (lambda w: w.sqrt(), lambda w: w.log(), lambda w: 1 / w, lambda w: w**-2):
        r = lens.mirror(f(w).sum(), params={"w": w}, mode="scalar")
        g = torch.autograd.grad(f(w).sum(), w)[0]
        assert np.array_equal(r.grads["w"], g.numpy(), equal_nan=True)


def test_memory_per_scalar_mode_value_is_what_the_limit_assumes():
    import tracemalloc
    x = np.random.default_rng(0).standard_normal(20_000)
    g = scalar.as_values(x)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = g * x  # what a rule makes: one Value per element, its float, the number operand, the array
        per = (tracemalloc.get_traced_memory()[0] - before) / x.size
    finally:
        tracemalloc.stop()
    assert out.shape == x.shape and per <= scalar.BYTES_PER_VALUE + 8, per
