import os
import re
import subprocess
import sys
from pathlib import Path

from autogradlens import cli
from autogradlens.demo import run_demo


def test_demo_writes_a_self_contained_report(tmp_path, capsys, browser):
    assert cli.main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    path = tmp_path / "report.html"
    out = capsys.readouterr().out  # not a terminal: a line per phase, then where the report is
    assert f"report: {path}" in out and f"open {path.resolve().as_uri()} in a browser" in out
    phases = [line for line in out.splitlines() if re.match(r"\d/5 ", line)]
    assert [p[:3] for p in phases] == ["1/5", "2/5", "3/5", "4/5", "5/5"], out
    assert "training with SGD under watch, 2 epochs" in out and "test accuracy" in out
    html = path.read_text()
    for heading in ("The lecture neuron", "One training step", "Value mirror", "SGD vs Adam",
                    "What happens in one step", "Gradient norms", "Update / parameter ratio",
                    "Memory kept for backward", "step size", "side by side", "as Values: data and grad",
                    "Gradients on the graph", "Your own backprop, graded"):
        assert heading in html, heading
    assert html.count("<svg") >= 6 and html.count("data:image/png;base64,") >= 6
    assert "data 0.7071" in html and "grad 1.0000" in html  # the neuron as Values: o = 0.7071, do/do = 1
    assert not re.search(r"(src|href)=[\"']https?://", html)  # opens offline: nothing fetched
    assert "accumulate" in html and "pack" in html and "NllLossBackward0" in html
    assert "first wrong: counts" in html and "one_path" in html  # the graded exercise
    assert (tmp_path / "mlp_graph.json").exists() and (tmp_path / "mirror.svg").exists()
    # as a reader sees it, in a 1280 px window: nothing clipped or sideways, every text readable
    m = browser.page(html)
    assert m["page_overflow"] <= 0 and m["overflow"] <= 0, m.summary()
    svgs = [p for p in m["pics"] if p["tag"] == "svg"]
    imgs = [p for p in m["pics"] if p["tag"] == "img"]
    assert len(svgs) >= 6 and len(imgs) >= 6
    assert all(p["width"] <= 1100 for p in m["pics"]) and all(p["width"] >= p["natural"] - 1 for p in imgs)
    assert m.share_readable(8) >= 0.98, m.small(8)[:5]
    assert min(browser.figure_text_px(m)) >= 8


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


def test_demo_through_a_pipe_shows_progress_as_it_goes(tmp_path):
    """`make demo | cat`: the first phase line arrives while the demo is still working (flushed, not buffered)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "autogradlens", "demo", "--out", str(tmp_path), "--epochs", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        first = p.stdout.readline()
        assert first.startswith("data: digits, 1348 training and 449 test images"), first
        assert p.poll() is None  # still running: 60 epochs of training and a report are ahead of it
    finally:
        p.kill()
        p.wait()
