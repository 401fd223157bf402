"""A real headless Chromium for the picture tests: a notebook display is shown as JupyterLab shows it, in an
848 px output column (JupyterLab 4 at 1280×900), and a page at 1280 px; then what a person sees is measured:
horizontal overflow and the size every piece of text is drawn at.

The browser is Debian's ``chromium`` (``make setup`` installs it with apt when it runs as root, as it does
Graphviz), driven by Playwright (its own browser downloads are never used): :func:`chromium` finds it, or says
how to get one. One browser serves every test of a worker (:func:`shared`).
"""

from __future__ import annotations

import base64
import os
import shutil
import urllib.parse
from pathlib import Path

COLUMN = 848  # JupyterLab 4's output area at a 1280×900 window
WINDOW = (1280, 900)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HOW = ("no Chromium for the browser tests: `make setup` installs Debian's `chromium` with apt when run as root; "
       "otherwise install Chromium or Chrome (apt/brew) or set CHROMIUM=/path/to/chrome")

# The rules of JupyterLab 4 (jlab_core's CSS) that size an output: the output area scrolls what overflows;
# an inline <svg> or <img> in HTML output and an <svg> of an SVG output are scaled down to the column; an
# image/svg+xml output is an <img> of the SVG (renderSVG), which no rule scales.
_JUPYTERLAB_CSS = """
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:13px;
  background:#fff}
.jp-Cell{display:flex;width:%(column)dpx;margin:0 0 0 %(margin)dpx}
.jp-OutputArea-output{width:100%%;height:auto;overflow:auto}
.jp-RenderedHTMLCommon{font-size:14px;line-height:1.6;padding-right:20px}
.jp-RenderedHTMLCommon img,.jp-RenderedImage img,.jp-RenderedHTMLCommon svg,.jp-RenderedSVG svg{max-width:100%%;
  height:auto}
.jp-RenderedHTMLCommon table{border-collapse:collapse;border-spacing:0;border:none;font-size:13px;
  table-layout:fixed;margin-left:auto;margin-bottom:1em;margin-right:auto}
.jp-OutputArea-output.jp-RenderedHTMLCommon table{margin-left:0;margin-right:0}
.jp-RenderedHTMLCommon td,.jp-RenderedHTMLCommon th,.jp-RenderedHTMLCommon tr{vertical-align:middle;padding:.5em;
  line-height:normal;white-space:normal;max-width:none;border:none}
.jp-RenderedHTMLCommon th{font-weight:bold}
.jp-RenderedHTMLCommon p{text-align:left;margin:0;margin-bottom:1em}
.jp-RenderedText pre{margin:0;font-size:13px;white-space:pre-wrap}
""".replace("%%", "%").replace("%(column)d", str(COLUMN)).replace("%(margin)d", str((WINDOW[0] - COLUMN) // 2))

# Order in which JupyterLab picks a mime type from a bundle (its standard renderers' ranks).
_ORDER = ("text/html", "text/markdown", "image/svg+xml", "image/png", "image/jpeg", "text/plain")

# What a person sees: overflow of the column and of the window, every text's drawn size (an SVG <text>: its
# font size times the scale its screen transform applies; HTML text: its computed font size), the pictures'
# natural and drawn widths.
_MEASURE = r"""
(sel) => {
  const host = document.querySelector(sel);
  const texts = [];
  const w = document.createTreeWalker(host, NodeFilter.SHOW_TEXT);
  for (let n = w.nextNode(); n; n = w.nextNode()) {
    const s = n.textContent.trim();
    if (!s) continue;
    const el = n.parentElement;
    if (!el || el.closest('style,script,title')) continue;
    const cs = getComputedStyle(el);
    if (cs.display === 'none' || cs.visibility === 'hidden') continue;
    let px = parseFloat(cs.fontSize);
    const svgText = el.closest('text');
    if (svgText) {
      const m = svgText.getScreenCTM();
      px *= Math.sqrt(Math.abs(m.a * m.d - m.b * m.c));
    }
    const r = el.getBoundingClientRect();
    texts.push({text: s.slice(0, 60), px: Math.round(px * 100) / 100, right: r.right, left: r.left});
  }
  const pics = [...host.querySelectorAll('svg, img')].filter(e => !e.parentElement.closest('svg')).map(e => {
    const r = e.getBoundingClientRect();
    const natural = e.tagName === 'img' || e.tagName === 'IMG' ? e.naturalWidth
      : (e.width && e.width.baseVal ? e.width.baseVal.value : r.width);
    return {tag: e.tagName.toLowerCase(), natural: natural, width: r.width, height: r.height, left: r.left,
            right: r.right, text_px: e.dataset && e.dataset.textPx ? parseFloat(e.dataset.textPx) : null};
  });
  const outs = [...host.querySelectorAll('.jp-OutputArea-output, .pic')];
  const over = outs.map(o => o.scrollWidth - o.clientWidth);
  const box = host.getBoundingClientRect();
  return {texts, pics, overflow: Math.max(0, ...over), column: box.width,
          page_overflow: document.documentElement.scrollWidth - window.innerWidth,
          right: Math.max(box.right, ...pics.map(p => p.right))};
}
"""


def chromium() -> str | None:
    """The browser to use: $CHROMIUM, else the first Chromium or Chrome on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def bundle_of(obj) -> dict:
    """The mime bundle a notebook kernel (IPython) sends for `obj`."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(obj)
    return data


def output_html(bundle: dict) -> str:
    """One notebook output as JupyterLab puts it in the page."""
    kind = next(k for k in _ORDER if k in bundle)
    data = bundle[kind]
    if kind == "text/html":
        return f'<div class="jp-OutputArea-output jp-RenderedHTMLCommon jp-RenderedHTML">{data}</div>'
    if kind == "image/svg+xml":
        src = "data:image/svg+xml," + urllib.parse.quote(data)
        return f'<div class="jp-OutputArea-output jp-RenderedSVG"><img src="{src}"></div>'
    if kind in ("image/png", "image/jpeg"):
        b64 = data if isinstance(data, str) else base64.b64encode(data).decode()
        return f'<div class="jp-OutputArea-output jp-RenderedImage"><img src="data:{kind};base64,{b64}"></div>'
    import html
    return f'<div class="jp-OutputArea-output jp-RenderedText"><pre>{html.escape(str(data))}</pre></div>'


class Browser:
    """One headless Chromium page, reused: ``notebook(obj)`` and ``page(html)`` return measurements."""

    def __init__(self, path: str):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=path, args=["--no-sandbox",
                                                                                 "--disable-gpu"])
            self._page = self._browser.new_page(viewport={"width": WINDOW[0], "height": WINDOW[1]})
        except Exception:
            self._pw.stop()
            raise

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()

    def notebook(self, obj, screenshot=None) -> dict:
        """Show `obj` (or a mime bundle: a dict with mime-type keys) as a JupyterLab output and measure it."""
        bundle = obj if isinstance(obj, dict) and any("/" in k for k in obj) else bundle_of(obj)
        body = f'<div class="jp-Cell" id="cell">{output_html(bundle)}</div>'
        return self._show(f"<style>{_JUPYTERLAB_CSS}</style>{body}", "#cell", screenshot)

    def page(self, html: str, screenshot=None) -> dict:
        """Show a whole page at the window's width and measure it."""
        return self._show(html, "body", screenshot)

    def figure_text_px(self, m) -> list[float]:
        """The smallest text of each PNG figure of a measured page, as drawn (its px in the PNG times the scale)."""
        return [p["text_px"] * p["width"] / p["natural"] for p in m["pics"] if p["text_px"] and p["natural"]]

    def _show(self, html: str, sel: str, screenshot) -> dict:
        p = self._page
        p.set_content(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{html}</body></html>"
                      if "<html" not in html[:200].lower() else html, wait_until="load")
        m = p.evaluate(_MEASURE, sel)
        if screenshot:
            p.screenshot(path=str(screenshot), full_page=True)
        return Measure(m)


class Measure(dict):
    """What the browser measured, with the numbers the tests read."""

    @property
    def text_px(self) -> list[float]:
        return sorted(t["px"] for t in self["texts"])

    def small(self, px: float = 8.0) -> list:
        return [t for t in self["texts"] if t["px"] < px]

    def share_readable(self, px: float = 8.0) -> float:
        n = len(self["texts"])
        return 1.0 if not n else 1 - len(self.small(px)) / n

    @property
    def width(self) -> float:
        return max((p["width"] for p in self["pics"]), default=0.0)

    def summary(self) -> str:
        px = self.text_px
        natural = max((p["natural"] for p in self["pics"]), default=0)
        lo, hi = (px[0], px[-1]) if px else (0, 0)
        return (f"picture {self.width:.0f} px wide (natural {natural:.0f}), overflow {self['overflow']:.0f} px, "
                f"text {lo:.1f}-{hi:.1f} px, {100 * self.share_readable():.0f}% >= 8 px")


def problems(m, px: float = 8.0) -> list[str]:
    """What keeps a measured display from fitting its column: overflow, a picture wider than the column or
    scaled below its natural size when it is a PNG (whose text would shrink), text drawn below `px`."""
    out = []
    if m["overflow"] > 0 or m["page_overflow"] > 0:
        out.append(f"overflows sideways by {max(m['overflow'], m['page_overflow']):.0f} px")
    for p in m["pics"]:
        if p["width"] > COLUMN:
            out.append(f"a {p['tag']} {p['width']:.0f} px wide")
        if p["tag"] == "img" and p["natural"] and p["width"] < p["natural"] - 1:
            out.append(f"an image shrunk from {p['natural']} to {p['width']:.0f} px")
    if m["texts"] and (m.share_readable(px) < 0.98 or min(m.text_px) < px - 1):
        out.append(f"text below {px:g} px: {[(t['text'], t['px']) for t in m.small(px)[:4]]}")
    return out


_SHARED: list = []


def shared() -> Browser:
    """The worker's one browser (started on first use, closed at exit); fails, saying how to get one, when no
    Chromium can be found: a picture test never passes by not looking."""
    if not _SHARED:
        path = chromium()
        if path is None:
            raise RuntimeError(HOW)
        import atexit

        b = Browser(path)
        atexit.register(b.close)
        _SHARED.append(b)
    return _SHARED[0]
