"""A self-contained HTML page (pictures inline, opens offline) from a list of sections."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #ffd166}h2{margin-top:2em;border-bottom:1px solid #ddd}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f0f3f8}.pic{overflow:auto;border:1px solid #eee;padding:.5em;margin:.5em 0}
.pic svg,.pic img{max-width:100%;height:auto}.note{color:#555;font-size:14px;background:#fffbea;padding:.5em .8em;
border-left:3px solid #ffd166}.ok{color:#2a7a2a}.bad{color:#b00020}
"""


COLUMN = 1080  # px: the width a picture gets in the page (the 1100 px body less the frame around a picture)
DPI = 110  # a figure's PNG: plots.WIDTH (8.4 in) is 924 px, inside the column at full size


def esc(s) -> str:
    return html.escape(str(s))


def svg(svg_text: str) -> str:
    """Inline an SVG document (the XML prolog and doctype are dropped)."""
    body = re.sub(r"^.*?(?=<svg)", "", svg_text, flags=re.S)
    return f'<div class="pic">{body}</div>'


def figure(fig) -> str:
    """Inline a matplotlib figure as a PNG (``data-text-px``: its smallest text, in px of the PNG)."""
    from matplotlib.text import Text

    from .plots import png

    data, dpi = png(fig, DPI, COLUMN)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    px = f' data-text-px="{min(sizes) * dpi / 72:.1f}"' if sizes else ""
    return (f'<div class="pic"><img{px} alt="figure" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}"></div>')


def link(node_id) -> str:
    """A link to a node of a graph drawn on the same page (its SVG element's id)."""
    if not node_id:
        return ""
    from .render import _html_id
    return f'<a href="#{esc(_html_id(str(node_id)))}">{esc(node_id)}</a>'


def pre(text: str) -> str:
    """Preformatted text that wraps its long lines (in a notebook, where this page's style is absent, too)."""
    return f'<pre style="white-space:pre-wrap;overflow-wrap:anywhere">{esc(text)}</pre>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(rows: list[dict], columns: list[str] | None = None, limit: int = 400, html_columns=()) -> str:
    """An HTML table; cells are escaped except in `html_columns` (already HTML, e.g. from :func:`link`)."""
    if not rows:
        return "<p><i>(none)</i></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{r.get(c) or '' if c in html_columns else esc(_fmt(r.get(c)))}</td>"
                                    for c in columns) + "</tr>" for r in rows[:limit])
    more = f"<p><i>… {len(rows) - limit} more rows</i></p>" if len(rows) > limit else ""
    # a long name (layer1.0.downsample.0.weight) breaks inside rather than push the table past the column
    return f'<table style="max-width:100%;overflow-wrap:anywhere"><tr>{head}</tr>{body}</table>{more}'


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def page(title: str, sections: list[tuple[str, str]], intro: str = "") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>", intro]
    toc = "".join(f"<li><a href='#s{i}'>{esc(h)}</a></li>" for i, (h, _) in enumerate(sections))
    parts.append(f"<ul>{toc}</ul>")
    for i, (heading, body) in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{esc(heading)}</h2>{body}")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path, title: str, sections: list[tuple[str, str]], intro: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, sections, intro), encoding="utf-8")
    return path
