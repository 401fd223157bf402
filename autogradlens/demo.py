"""`autogradlens demo`: the main job, written as one self-contained HTML report.

Trains an MLP on digits with SGD and with Adam under `watch`, traces and mirrors one step, diffs two
graphs, and writes `report.html` (pictures inline, opens offline) with a plain-language reading of each part.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import plots, report
from .checking import check
from .diffing import diff
from .errors import LensTypeError, LensValueError
from .examples import MLP, makemore_exercise, neuron, neuron_formula
from .mirror import mirror
from .tracing import trace
from .training import DEFAULT_LR, fit
from .value import Value


def load_data(spec: str):
    from . import data as datasets

    if spec == "digits":
        return datasets.digits()
    if spec.startswith("mnist:"):
        return datasets.mnist(spec.split(":", 1)[1], limit=10_000)
    raise LensValueError(f"--data must be 'digits' or 'mnist:DIR' (a folder with the MNIST IDX files), got {spec!r}")


def graph_section(t, reading: str, **opts) -> str:
    s = t.summary()
    counts = ", ".join(f"{k} ×{v}" for k, v in s["by_type"].items())
    return (report.note(reading) + report.svg(t.to_svg(width=report.COLUMN, **opts)) +
            f"<p>{s['nodes']} nodes ({report.esc(counts)}); {s['saved_tensors']} saved tensor slots in "
            f"{s['saved_storages']} storages, {s['saved_bytes']:,} bytes.</p>")


def saved_table(t) -> str:
    rows = [{"node": n, "slot": s["name"], "shape": s["shape"], "dtype": s["dtype"], "bytes": s["nbytes"],
             "storage": s["storage"], "its own output": s["is_output"], "same storage as": s["alias"],
             "state": s["state"]}
            for n, d in t.graph.nodes(data=True) for s in d["saved"]]
    return report.table(rows)


def _timeline(w, step: int) -> str:
    rows = []
    for e in w.events:
        if e["step"] != step:
            continue
        detail = {k: v for k, v in e.items() if k not in ("kind", "step", "note", "node_id")}
        rows.append({"#": len(rows), "kind": e["kind"], "node": report.link(e.get("node_id")),
                     "detail": ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in detail.items())})
    return report.table(rows, limit=80, html_columns=("node",))


def lecture_neuron(exp: bool = False):
    """The lecture's neuron with Value, labelled as in the lecture, after backward(); with `exp`, tanh written as
    the lecture's notebook writes it, (e - 1) / (e + 1) with e = (2n).exp()."""
    def v(x, name):
        out = Value(x)
        try:
            out.label = name
        except AttributeError:  # a Value without labels still draws, with node ids
            pass
        return out

    x1, x2, w1, w2, b = v(2.0, "x1"), v(0.0, "x2"), v(-3.0, "w1"), v(1.0, "w2"), v(6.8813735870195432, "b")
    x1w1, x2w2 = x1 * w1, x2 * w2
    x1w1x2w2 = x1w1 + x2w2
    n = x1w1x2w2 + b
    if exp:
        e = (2 * n).exp()
        o = (e - 1) / (e + 1)
    else:
        o = n.tanh()
    for val, name in ((x1w1, "x1*w1"), (x2w2, "x2*w2"), (x1w1x2w2, "x1*w1 + x2*w2"), (n, "n"), (o, "o")):
        try:
            val.label = name
        except AttributeError:
            pass
    o.backward()
    return o


def run_demo(out="out", data: str = "digits", epochs: int = 30, progress: bool = True, log=None) -> Path:
    """Run the whole lens on an MLP and write ``out/report.html``; returns its path.

    `progress` shows tqdm bars while training; `log`, when given, is called with one line per phase
    (the command line prints them, so a pipe or a log file shows progress too).

    Raises:
        LensValueError: `epochs` below 1, or `data` neither 'digits' nor 'mnist:DIR'.
        LensFileNotFoundError: 'mnist:DIR' names a folder without the MNIST files.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise LensTypeError(f"epochs must be an int, got {type(epochs).__name__}")
    if epochs < 1:
        raise LensValueError(f"epochs must be at least 1 (each optimizer trains this many epochs), got {epochs}")
    say = log or (lambda line: None)
    t0 = time.perf_counter()
    out = Path(out)
    d = load_data(data)
    out.mkdir(parents=True, exist_ok=True)
    say(f"data: {data}, {len(d.x_train)} training and {len(d.x_test)} test images")
    sections = []

    # 0. the lecture neuron as Values: data and grad on every node
    sections.append(("The lecture neuron as Values: data and grad", report.note(
        "The micrograd lecture's picture: every value is a record label | data | grad, every operation a small "
        "node between. After o.backward() each grad is do/dvalue: w2 gets 0 because x2 = 0, and the gradient "
        "passes through + unchanged.") + report.svg(trace(lecture_neuron()).to_svg(width=report.COLUMN))))

    # 1. the lecture neuron
    say("1/5 tracing the lecture neuron")
    o, p = neuron()
    tn = trace(o, params=p)
    sections.append(("The lecture neuron in PyTorch: what grad_fn is", graph_section(
        tn, "o = tanh(x1·w1 + x2·w2 + b). Each box is a grad_fn node; arrows point the way gradients flow, from "
            "the output back to the leaves, where AccumulateGrad writes .grad. AddBackward0 has two successors: "
            "the graph is a DAG, not a linked list. The pink notes are what each node saved for backward: "
            "tanh keeps its result (its derivative is 1 - tanh²), each product keeps both factors.")
        + report.pre(tn.to_text())))

    # 2. one MLP step: graph, saved tensors, mirror
    say("2/5 tracing and mirroring one training step of the MLP")
    torch.manual_seed(0)
    model = MLP((d.n_features, 64, d.n_classes))
    x, y = d.x_train[:32].clone(), d.y_train[:32].clone()  # a batch of its own (a view would keep the whole set)
    loss = F.cross_entropy(model(x), y)
    t = trace(loss, params=model)
    t.render(out / "mlp_graph.svg")
    t.render(out / "mlp_graph.json")
    sections.append(("One training step of an MLP on digits", graph_section(
        t, "Linear layers appear as AddmmBackward0 (bias + x @ W.t()) fed by TBackward0 (the transpose of the "
           "weight); cross-entropy is LogSoftmaxBackward0 then NllLossBackward0. The first Linear saves no weight "
           "view: its input (the images) needs no gradient. ReLU's result and the next Linear's input are one "
           "storage, counted once.") + "<h3>Saved tensors</h3>" + saved_table(t)))
    tg = trace(loss, params=model, grads=True)
    sections.append(("Gradients on the graph", report.note(
        "The same step traced with grads=True: one extra backward pass recorded the gradient flowing into every "
        "node (.grad untouched). Nodes are coloured by the log of the gradient's norm (pale: small, red: large); "
        "the figure below shows it per layer: a layer whose dots sink towards the grey band is not learning.")
        + report.svg(tg.to_svg(width=report.COLUMN)) + report.figure(plots.gradient_flow(tg, weights_only=False))))
    rep = mirror(loss, params=model)
    rep.render(out / "mirror.svg")
    c = rep.counts()
    sections.append(("The Value mirror agrees with PyTorch", report.note(
        f"Every node's backward was re-derived with micrograd-style Value rules ({rep.mode} mode) and compared "
        f"with the gradients PyTorch computed: {c['match']} rows agree, {c['exact']} of them bit for bit, "
        f"{c['mismatch']} disagree. Elementwise rules agree to the bit; matrix products and batch sums agree "
        "to the last bits only, because BLAS adds in a different order.")
        + report.pre(rep.to_text()) + report.svg(rep.to_svg(width=report.COLUMN))))

    # the learner's own backprop, graded
    loss_m, grads_m, names_m = makemore_exercise("one_path")
    graded = check(loss_m, grads_m, params=names_m)
    sections.append(("Your own backprop, graded line by line", report.note(
        "Makemore part 4's exercise: the lecture's network, loss.backward(), then the backward pass written by "
        "hand, one line per tensor (dlogprobs, dprobs, ..., dC), as a learner hands it in, with one line missing: "
        "dcounts += torch.ones_like(counts) * dcounts_sum (counts is used twice). lens.check compares every line "
        f"with PyTorch's gradient and finds the first wrong one: {graded.first_wrong} "
        f"({next(r['diagnosis'] for r in graded.rows if r['status'] == 'wrong')}). Lines after it that are right "
        "given the wrong one say so (inherits).") + report.pre(graded.to_text())
        + report.svg(graded.to_svg(width=report.COLUMN))))

    # 3. SGD vs Adam under watch
    hists = {}
    for i, name in enumerate(("sgd", "adam")):
        say(f"{3 + i}/5 training with {name.upper() if name == 'sgd' else name.capitalize()} under watch, "
            f"{epochs} epoch{'s' if epochs != 1 else ''}")
        torch.manual_seed(0)
        hists[name] = fit(MLP((d.n_features, 64, d.n_classes)), d, name, epochs=epochs,
                          watch={"retain": ["net.1"], "sample": 1}, progress=progress)  # every step: plotted
        say(f"    test accuracy {hists[name].final_test_acc:.3f} after {hists[name].seconds:.1f} s")
    say("    plotting what watch recorded")
    ws = {h.optimizer: h.watch for h in hists.values()}
    rows = [{"optimizer": h.optimizer, "lr": DEFAULT_LR[k], "epochs": epochs, "steps": len(h.loss),
             "final loss": h.loss[-1], "test accuracy": h.final_test_acc, "seconds": round(h.seconds, 2),
             "events logged": len(h.watch.events)} for k, h in hists.items()]
    sections.append(("SGD vs Adam on the same MLP", report.table(rows) + report.note(
        "Both learn the digits. SGD moves every weight by lr × gradient; Adam divides each gradient by a running "
        "estimate of its own size, so every parameter gets its own step size.")
        + report.figure(plots.training_curves(hists))))
    opt_watches = {"SGD": ws["SGD"], "Adam": ws["Adam"]}
    wa = hists["adam"].watch
    step = min(5, len(wa.steps) - 1)
    sections.append((f"What happens in one step (Adam, step {step})", report.note(
        "The timeline as PyTorch's hooks saw it. pack: the forward pass saves a tensor for backward (and which "
        "node and slot saved it); backward: loss.backward() starts; unpack: backward reads a saved tensor back; "
        "retain: retain_grad() on the hidden ReLU output received its gradient (other intermediates keep .grad "
        "None); accumulate: AccumulateGrad wrote .grad (fresh, since zero_grad() ran); update: the optimizer moved "
        "the parameter. Node ids link to the graph of the MLP step above.") + _timeline(wa, step)))
    sections.append(("Gradient norms per layer", report.note(
        "The norm of each parameter's .grad at every step. Gradients shrink as the loss falls; noisy because each "
        "step sees a different mini-batch (faint: every step; line: moving average). SGD left, Adam right, on "
        "the same scale.") + report.figure(plots.grad_norms(opt_watches))))
    sections.append(("Update / parameter ratio", report.note(
        "‖update‖ / ‖parameter‖ per step: how fast each layer changes. A common rule of thumb (dashed) is about "
        "1e-3; far above means a layer is being rewritten every step, far below means it barely learns.")
        + report.figure(plots.update_ratios(opt_watches))))
    sections.append(("Memory kept for backward", report.note(
        f"Bytes autograd saved each step, by the node type that saved them (each storage counted once). "
        f"About {ws['SGD'].steps[0]['saved_bytes']:,} bytes per step at batch 32; it grows linearly with the "
        "batch size, and backward frees it.") + report.figure(plots.saved_bytes(ws["Adam"]))))
    sections.append(("Adam's step size vs SGD's", report.note(
        "SGD's effective step size is its learning rate, the same for every weight and every step. Adam's is "
        "lr / (√v̂ + ε) for each weight (median per layer shown): large early, when the squared-gradient estimate "
        "v̂ is small, then settling per layer.") + report.figure(plots.step_sizes(ws))))

    # 4. a diff
    say("5/5 diffing two graphs and writing the report")
    f, q = neuron_formula()
    dn = diff(tn, trace(f, params=q))
    sections.append(("Two graphs side by side: tanh vs its formula", report.note(
        "The neuron with torch.tanh against the same neuron with tanh written as (e^{2n} - 1) / (e^{2n} + 1). "
        "The weighted sum matches wholesale; tanh turns into a division (orange) and four nodes appear (green).")
        + report.svg(dn.to_svg(width=report.COLUMN)) + report.pre(dn.to_text())))

    intro = (f"<p>Generated by autogradlens in {time.perf_counter() - t0:.1f} s from real PyTorch autograd graphs and "
             f"hooks (torch {torch.__version__}); data: {report.esc(data)} ({len(d.x_train)} training images of "
             f"{d.shape[0]}×{d.shape[1]} pixels).</p>")
    return report.write(out / "report.html", "autogradlens report", sections, intro)

