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
    assert h.seconds < 60


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
