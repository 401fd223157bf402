import re

from autogradlens import cli
from autogradlens.demo import run_demo


def test_demo_writes_a_self_contained_report(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    path = tmp_path / "report.html"
    assert f"report: {path}" in capsys.readouterr().out
    html = path.read_text()
    for heading in ("The lecture neuron", "One training step", "Value mirror", "SGD vs Adam",
                    "What happens in one step", "Gradient norms", "Update / parameter ratio",
                    "Memory kept for backward", "step size", "side by side", "as Values: data and grad",
                    "Gradients on the graph"):
        assert heading in html, heading
    assert html.count("<svg") >= 6 and html.count("data:image/png;base64,") >= 6
    assert "data 0.7071" in html and "grad 1.0000" in html  # the neuron as Values: o = 0.7071, do/do = 1
    assert not re.search(r"(src|href)=[\"']https?://", html)  # opens offline: nothing fetched
    assert "accumulate" in html and "pack" in html and "NllLossBackward0" in html
    assert (tmp_path / "mlp_graph.json").exists() and (tmp_path / "mirror.svg").exists()


def test_demo_bad_data(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--data", "cifar"]) == 2
    assert "--data must be 'digits' or 'mnist:DIR'" in capsys.readouterr().err


def test_demo_on_mnist_files(tmp_path):
    from test_data import fake_mnist

    root = tmp_path / "mnist"
    root.mkdir()
    fake_mnist(root, n_train=64, n_test=16)
    path = run_demo(out=tmp_path / "out", data=f"mnist:{root}", epochs=1, progress=False)
    assert "4×4 pixels" in path.read_text()
