"""How a picture chooses its layout for the column it is shown in, how big graphs stay drawable, and that dot never
outlives a render; short text for big traces; the program's version."""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gallery
import pytest
import torch

import autogradlens as lens
from autogradlens import _deps, render

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_picture_goes_left_to_right_while_that_fits_and_top_to_bottom_when_not():
    t = gallery.lecture_expression()
    wide = render.fit(t, 2000)  # a wide column: the lecture's own look, at natural size
    assert wide.options["rankdir"] == "LR" and wide.scale == 1.0
    narrow = render.fit(t, render.COLUMN)
    assert narrow.options["rankdir"] == "TB" and narrow.text_px >= render.COMFORT_PX
    assert narrow.natural * narrow.scale <= render.COLUMN
    assert 'style="max-width:100%;height:auto"' in narrow.svg and not narrow.svg.startswith("<?xml")
    # what the caller fixes stays fixed; the notebook shows the fitted picture as HTML (and as SVG)
    assert render.fit(t, render.COLUMN, rankdir="LR").options["rankdir"] == "LR"
    bundle = t._repr_mimebundle_()
    assert bundle["image/svg+xml"] in bundle["text/html"] and "grad 1.0000" in bundle["text/html"]


def test_text_size_decides_how_much_collapses():
    t = gallery.deep_bn_mlp()
    f = render.fit(t)  # 70 nodes in a straight column fit: nothing is hidden
    assert "collapsed" not in f.svg and f.text_px >= render.COMFORT_PX
    loss, m = gallery.resnet18()
    r = render.fit(lens.trace(loss, params=m))  # 134 nodes do not: the blocks collapse, text stays readable
    assert "layer1.0 · BasicBlock" in r.svg and "depth=99 expands all" in r.svg and r.fits


def test_unlabelled_values_show_an_empty_label_as_draw_dot_does():
    a, b = lens.Value(2.0, label="a"), lens.Value(-3.0)
    c = a * b
    c.backward()
    t = lens.trace(c)
    lr = t.to_dot(rankdir="LR")
    assert '"{  | data 2.0000 | grad 6.0000 }"' not in lr  # a is labelled
    assert "{ a | data 2.0000 | grad -3.0000 }" in lr and "{  | data -3.0000 | grad 2.0000 }" in lr
    assert 'tooltip="leaf:1"' in lr  # the id stays reachable (hover, SVG element id)
    tb = t.to_dot(rankdir="TB")  # top to bottom: the record's fields stay side by side
    assert '"a | data 2.0000 | grad -3.0000"' in tb
    assert t.to_text().splitlines()[0] == "*:0  data=-6.0000 grad=1.0000  ROOT"
    assert "a = leaf:0  data=2.0000 grad=-3.0000" in t.to_text()


def _value_mlp(n_in=16, hidden=(24, 24), batch=5):
    torch.manual_seed(0)
    V = lens.Value
    rnd = torch.rand(100_000).tolist()
    it = iter(rnd)
    layers = [[([V(next(it) - 0.5) for _ in range(a)], V(0.0)) for _ in range(b)]
              for a, b in zip((n_in, *hidden), (*hidden, 1))]
    loss = V(0.0)
    for _ in range(batch):
        x = [V(next(it)) for _ in range(n_in)]
        for i, layer in enumerate(layers):
            x = [sum((w * xi for w, xi in zip(ws, x)), bias) for ws, bias in layer]
            if i < len(layers) - 1:
                x = [v.tanh() for v in x]
        loss = loss + (x[0] - 1.0) ** 2
    loss.backward()
    return loss


def test_a_value_graph_too_big_to_draw_readably_draws_the_part_near_the_output():
    t = lens.trace(_value_mlp())
    assert len(t) > 8_000  # an MLP as Values (the demo's had 65,818: dot ran for minutes on all of it)
    spec = t._spec()  # render(path) draws the BOXES values nearest the output, and says how to draw all
    records = [s for _, s in spec["nodes"] if s.get("shape") == "record"]
    assert len(records) == render.BOXES and "render(path, limit=None) draws all" in spec["label"]
    more = [s for _, s in spec["nodes"] if s.get("kind") == "box"]
    assert len(more) == 1 and f"{len(t) - render.BOXES:,} more values not drawn" in more[0]["label"]
    f = render.fit(t)  # what the notebook shows: at most FIT_LIMITS[0] values, however big the graph
    assert f.svg.count('class="node"') <= 2 * render.FIT_LIMITS[0] + 1 and "more values not drawn" in f.svg
    text = str(t)  # print(t): a summary and the first lines, not megabytes
    assert text.startswith(repr(t)) and len(text.splitlines()) < 40 and "to_text() gives all of it" in text
    assert len(t.to_text().splitlines()) > 8_000


def test_print_of_a_small_trace_is_its_tree_and_of_a_big_one_a_summary():
    x = torch.randn(3, requires_grad=True)
    small = lens.trace((x.exp() * 2).sum())
    assert str(small) == small.to_text()
    y = x
    for _ in range(20_000):
        y = y * 1.0001
    big = lens.trace(y.sum())
    s = str(big)
    assert s.splitlines()[0] == repr(big) and "20,002 nodes" in s and len(s) < 5_000
    assert big.to_text().count("\n") > 20_000


def test_dot_is_stopped_when_it_takes_too_long():
    src = _slow_dot_source()
    with pytest.raises(_deps.DotTimeout):
        _deps.run_dot(src, "svg", timeout=0.5)
    assert not _dot_children(os.getpid())


def _slow_dot_source(n: int = 1500) -> str:
    """A graph dot needs minutes for: many crossing edges."""
    edges = " ".join(f"n{i} -> n{(i * 7919) % n}; n{i} -> n{(i * 104729 + 1) % n};" for i in range(n))
    return f"digraph g {{ {edges} }}"


def _dot_children(pid: int) -> list[int]:
    """Process ids of the `dot` programs started by `pid` (setpriv execs into dot: the same process)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = []
    for k in out:
        name = subprocess.run(["ps", "-o", "comm=", "-p", k], capture_output=True, text=True).stdout.strip()
        if name in ("dot", "setpriv"):
            kids.append(int(k))
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


RENDER = textwrap.dedent("""
    import sys
    import autogradlens as lens
    xs = [lens.Value(0.01 * i) for i in range(60)]
    acc = []
    for i in range(40):
        s = xs[i % 60]
        for j in range(30):
            s = s * xs[(i * 7 + j * 13) % 60] + xs[(i + j) % 60]
        acc.append(s)
    t = lens.trace(sum(acc, lens.Value(0.0)))
    print("rendering", flush=True)
    try:
        t.render(sys.argv[1], limit=None)  # 2,500 values, every one: dot needs minutes
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.stdin.read()  # stays alive (a notebook kernel goes on): dot must be gone already
""")


def test_an_interrupted_render_leaves_no_dot_behind(tmp_path):
    """Ctrl-C (Jupyter's interrupt), Ctrl-C pressed twice, and the process killed outright, while dot draws a
    picture it needs minutes for: no dot outlives any of them (three renders side by side)."""
    hows = ("ctrl-c", "ctrl-c twice", "killed")
    procs = {how: subprocess.Popen([sys.executable, "-c", RENDER, str(tmp_path / f"{i}.svg")],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
             for i, how in enumerate(hows)}
    try:
        dots = {}
        for how, p in procs.items():
            assert p.stdout.readline().strip() == "rendering"
            for _ in range(600):  # until dot runs (at most 60 s)
                dots[how] = _dot_children(p.pid)
                if dots[how]:
                    break
                subprocess.run(["sleep", "0.1"])
            assert dots[how], "dot never started"
        if sys.platform.startswith("linux"):  # the kernel stops dot with its parent, whatever ends that
            assert _deps.dot_command("svg")[:3] == ["setpriv", "--pdeathsig", "KILL"]
        procs["killed"].kill()
        for how in ("ctrl-c", "ctrl-c twice"):
            procs[how].send_signal(signal.SIGINT)
        procs["ctrl-c twice"].send_signal(signal.SIGINT)
        # after one Ctrl-C the process lives on, as a kernel does: dot must be gone by its own doing. (A second
        # Ctrl-C may land after the first was handled and end the process: then dot goes with it.)
        assert procs["ctrl-c"].stdout.readline().strip() == "interrupted" and procs["ctrl-c"].poll() is None
        procs["ctrl-c twice"].stdout.readline()
        procs["killed"].wait(timeout=30)
        left = []
        for _ in range(100):
            left = [(how, d) for how, ds in dots.items() for d in ds if _alive(d)]
            if not left:
                break
            subprocess.run(["sleep", "0.1"])
        assert not left, f"dot outlived an interrupted render: {left}"
        assert not list(tmp_path.glob("*.svg"))
        assert procs["ctrl-c"].poll() is None
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_program_tells_its_version():
    out = subprocess.run([sys.executable, "-m", "autogradlens", "--version"], capture_output=True, text=True,
                         env=ENV, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"autogradlens {lens.__version__}"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert lens.__version__ == version


def _ranks(dot_source: str) -> tuple[dict, list]:
    """Node -> y (dot's -Tplain layout, y grows upwards) and the edges as drawn."""
    out = _deps.run_dot(dot_source, "plain").decode()
    ys, edges = {}, []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "node":
            name = parts[1].strip('"')
            ys[name] = float(parts[3])
        elif parts and parts[0] == "edge":
            edges.append((parts[1].strip('"'), parts[2].strip('"')))
    return ys, edges


def test_a_two_layer_transformer_without_lens_modules_is_drawn_without_edges_going_back_up():
    t = gallery.transformer2()
    f = render.fit(t)
    spec = t._spec(**f.options)
    ys, edges = _ranks(render.spec_to_dot(spec))
    dashed = {(u, v) for u, v, a in spec["edges"] if a.get("style") == "dashed"}
    up = [(u, v) for u, v in edges if (u, v) not in dashed and ys[v] >= ys[u]]
    assert not up, f"edges drawn against the flow (a module left and re-entered): {up[:5]}"
    titles = [c["label"] for c in spec["clusters"]] + [c["label"] for c0 in spec["clusters"] for c in c0["clusters"]]
    assert "layers · ModuleList" in titles and "layers.0 · TransformerEncoderLayer" in titles
