"""`MirrorReport`: the rows of a mirror run, as a `cmp`-style table and as a picture coloured by verdict."""

from __future__ import annotations

from .. import report
from ..render import COLUMN, Drawable, trace_spec


class MirrorReport(Drawable):
    """What the mirror found: ``ok``, ``rows`` (one per node and one per leaf), ``unmirrored``.

    Each row is a dict: ``id``, ``type``, ``name`` (the node's name: a parameter name for leaves, the
    ``params`` name of an intermediate tensor, else the id), ``kind`` ("node"/"leaf"), ``status`` (match /
    mismatch / unmirrored), ``exact`` (bitwise equal in the graph's dtype), ``max_abs``, ``max_rel``,
    ``bound`` (the largest allowed difference; the local check for nodes, the end-to-end check for
    leaves) and, for nodes, ``e2e_status`` / ``e2e_exact`` / ``e2e_max_abs`` / ``e2e_bound`` (the mirror's
    own incoming gradient at that node vs PyTorch's: for a named intermediate, the gradient of the loss with
    respect to that tensor, as in the makemore lecture's ``cmp``), ``note`` (why a node is unmirrored).
    ``grads`` maps each leaf's name to the mirror's own gradient (a float64 numpy array), ``diverges_at``
    lists where the mirror and PyTorch part although every rule agreed, ``mode_reason`` why this mode.
    """

    def __init__(self, rows, trace, mode, diverges_at, grads=None, mode_reason=""):
        self.rows = rows
        self.grads = grads or {}  # leaf name -> the mirror's own end-to-end gradient (float64 array)
        self.trace = trace
        self.mode = mode
        self.mode_reason = mode_reason
        self.diverges_at = diverges_at

    @property
    def ok(self) -> bool:
        return all(r["status"] != "mismatch" and r.get("e2e_status") != "mismatch" for r in self.rows)

    @property
    def unmirrored(self) -> list[str]:
        return sorted({r["type"] for r in self.rows if r["status"] == "unmirrored"})

    def counts(self) -> dict:
        out = {"match": 0, "mismatch": 0, "unmirrored": 0, "exact": 0}
        for r in self.rows:
            out[r["status"]] += 1
            out["exact"] += bool(r["exact"])
        return out

    def to_text(self) -> str:
        """A table in the spirit of the makemore lecture's `cmp`: name | exact | approximate | maxdiff.

        Leaves and named intermediates show the gradient of the loss with respect to them (end to end);
        other nodes show the local check of their rule."""
        w = max([len(r["name"]) for r in self.rows] + [10])
        lines = [f"{'name':{w}s} | exact | approximate | maxdiff   | check"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            named = r["kind"] == "node" and r["name"] != r["id"] and r["e2e_status"] is not None
            if r["kind"] == "leaf" or named:
                st, ex, ma = r["e2e_status"] or r["status"], r["e2e_exact"], r["e2e_max_abs"] or 0.0
                check = "leaf (end to end)" if r["kind"] == "leaf" else f"d{r['name']} (end to end)"
                if named and r["status"] != "match":
                    check += f"; local {r['status']}"
            else:
                st, ex, ma = r["status"], r["exact"], r["max_abs"]
                check = "local"
                if r.get("e2e_status") == "mismatch":
                    check += "; end-to-end input differs"
            if r.get("note"):
                check += f" ({r['note']})"
            approx = {"match": "True", "mismatch": "FALSE", "unmirrored": "n/a"}.get(st, "n/a")
            lines.append(f"{r['name']:{w}s} | {str(bool(ex)):5s} | {approx:11s} | {ma:.2e}  | {check}")
        c = self.counts()
        lines.append(f"{'ok' if self.ok else 'NOT OK'}: {c['match']} match ({c['exact']} bit-identical), "
                     f"{c['mismatch']} mismatch, {c['unmirrored']} unmirrored; mode={self.mode}"
                     + (f" ({self.mode_reason})" if self.mode_reason else ""))
        if self.unmirrored:
            lines.append("unmirrored (PyTorch's gradients passed through): " + ", ".join(self.unmirrored))
        for nid in self.diverges_at:
            lines.append(f"end to end, the mirror and PyTorch part at the gradient flowing into {nid}: "
                         "something between its consumers and it (a tensor hook?) changed PyTorch's gradient")
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts()
        return f"<MirrorReport {'ok' if self.ok else 'NOT OK'}: {c['match']} match, {c['mismatch']} mismatch, " \
               f"{c['unmirrored']} unmirrored>"

    def __str__(self) -> str:
        return self.to_text()

    def colors(self) -> dict:
        pal = {"match": "#a8e6a3", "mismatch": "#f4a6a6", "unmirrored": "#e5e5e5"}
        return {r["id"]: pal["mismatch" if r.get("e2e_status") == "mismatch" else r["status"]] for r in self.rows}

    # drawing (to_dot, to_graphviz, to_svg, render, notebook display) comes from render.Drawable
    _what = "a mirror report"

    def _spec(self, **opts) -> dict:
        """The traced graph coloured by verdict: green match, red mismatch, grey unmirrored."""
        spec = trace_spec(self.trace, colors=self.colors(), legend=False, **opts)
        spec["legend"] = [("match", "added", "box"), ("mismatch", "removed", "box"), ("unmirrored", "freed", "box")]
        return spec

    def _text_formats(self, **opts) -> dict:
        return {"txt": lambda: self.to_text() + "\n"}

    def _repr_html_(self) -> str:
        cols = ["name", "type", "status", "exact", "max_abs", "max_rel", "e2e_status"]
        return (f"<p><b>{report.esc(repr(self))}</b></p>" + report.table(self.rows, cols)
                + report.svg(self.to_svg(width=COLUMN)))
