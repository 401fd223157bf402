import pytest
import torch

from autogradlens import data, training
from autogradlens.examples import MLP


@pytest.fixture(scope="module")
def digits():
    return data.digits()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_fit_reaches_95_percent_on_digits(digits, opt):
    torch.manual_seed(0)
    h = training.fit(MLP((64, 64, 10)), digits, opt, epochs=30, progress=False)
    assert h.final_test_acc >= 0.95, h.test_acc
    assert h.optimizer == {"sgd": "SGD", "adam": "Adam"}[opt] and len(h.loss) == 30 * 43


def test_fit_with_watch(digits):
    torch.manual_seed(0)
    h = training.fit(MLP((64, 16, 10)), digits, "adam", epochs=1, watch=True, progress=False)
    assert h.watch is not None and len(h.watch.steps) == 43
    assert h.watch.steps[0]["loss"] == pytest.approx(h.loss[0])


def test_bad_optimizer(digits):
    with pytest.raises(ValueError, match="'sgd', 'adam'"):
        training.fit(MLP((64, 8, 10)), digits, "rmsprop", epochs=1, progress=False)
    with pytest.raises(ValueError, match="act must be"):
        MLP((64, 8, 10), act="swish")


def test_optimizer_object_and_its_lr(digits):
    m = MLP((64, 8, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    h = training.fit(m, digits, opt, epochs=1, batch_size=2000, progress=False)
    assert h.optimizer == "SGD" and len(h.loss) == 1  # one batch holds the whole training set
    with pytest.raises(ValueError, match="leave lr out"):
        training.fit(m, digits, opt, lr=0.1, epochs=1, progress=False)


def test_nothing_to_train(digits):
    m = MLP((64, 8, 10)).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters that require grad"):
        training.fit(m, digits, epochs=1, progress=False)


@pytest.mark.parametrize("kw,msg", [({"batch_size": 0}, "batch_size must be at least 1"),
                                    ({"batch_size": -3}, "batch_size must be at least 1"),
                                    ({"epochs": 0}, "epochs must be at least 1"),
                                    ({"lr": -0.1}, "lr must be a positive number"),
                                    ({"seed": "0"}, "seed must be an int")])
def test_arguments_are_checked_before_training(digits, kw, msg):
    m = MLP((64, 8, 10))
    before = [p.clone() for p in m.parameters()]
    with pytest.raises((ValueError, TypeError), match=msg):
        training.fit(m, digits, "sgd", progress=False, **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
