"""HTML building blocks: escaped tables, embedded figures and the page shell.

The page is self-contained: figures are base64 PNG ``<img>`` tags, the style and the one script
are inline, and a Content-Security-Policy forbids every other source, so a page that renders
offline also renders on a machine with no network (and any accidental external reference would
show up as a console error in the browser test). The inline script records on ``<body>`` whether
every image decoded (``data-images-ok``) and any script error (``data-errors``), which a headless
browser's ``--dump-dom`` can read back.
"""
from __future__ import annotations

import base64
import math
from html import escape
from typing import Sequence, Union

from .common import interval, pct
from .figures import Rendered

#: A table cell: plain text (escaped), or (html, numeric value for ``data-value``; None: text).
Cell = Union[str, tuple[str, Union[float, None]]]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1250px;
padding:0 24px 60px;color:#222}
h1{margin-top:24px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
h3{margin-top:28px}nav{background:#f6f6f6;padding:8px 14px;border-radius:6px}
nav a{margin-right:14px}table{border-collapse:collapse;margin:10px 0;font-size:12.5px}
th,td{border:1px solid #ddd;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;white-space:nowrap}small{color:#666}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12.5px;color:#444;max-width:1000px}.note{color:#555;max-width:1000px}
.alarm{color:#fff;background:#b00020;padding:8px 12px;max-width:1000px}
.yes{background:#e6f4e6}.no{background:#fbe5e5}.partly{background:#fff5d6}
code{background:#f4f4f4;padding:0 3px}code.hash{word-break:break-all;font-size:11px}
"""

SCRIPT = """
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message));
    document.body.dataset.errors=errors.join(' | ');});
  window.addEventListener('load',function(){
    var imgs=document.images, ok=0;
    for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}}
    document.body.dataset.imagesTotal=String(imgs.length);
    document.body.dataset.imagesLoaded=String(ok);
    document.body.dataset.imagesOk=(ok===imgs.length&&imgs.length>0)?'true':'false';
    document.body.dataset.errors=errors.join(' | ');
  });
})();
"""

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")


def _cell(c: Cell, tag: str = "td") -> str:
    if isinstance(c, tuple):
        body, value = c
        if value is None:  # pre-built HTML, not a number
            return f"<{tag}>{body}</{tag}>"
        attr = "" if isinstance(value, float) and math.isnan(value) else f' data-value="{float(value)!r}"'
        return f'<{tag} class="num"{attr}>{body}</{tag}>'
    return f"<{tag}>{escape(str(c))}</{tag}>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], id: str = "",
          row_class: Sequence[str] | None = None) -> str:
    """An HTML table; tuple cells carry their exact value in ``data-value``."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        body.append(f"<tr{cls}>" + "".join(_cell(c) for c in r) + "</tr>")
    ident = f' id="{escape(id)}"' if id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def rate_cell(p: float, wl: float, wh: float, cl: float, ch: float, extra: str = "") -> Cell:
    """A rate with its Wilson (W) and Clopper–Pearson (CP) 95% intervals."""
    body = (f"{pct(p)}<br><small>W {interval(wl, wh)}<br>CP {interval(cl, ch)}"
            f"{'<br>' + extra if extra else ''}</small>")
    return body, float(p)


def num(v: float, fmt: str = "{:,.0f}") -> Cell:
    return ("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)), v


def figure(r: Rendered, caption: str) -> str:
    """An embedded PNG with a caption and a link to the SVG written beside the page."""
    data = base64.b64encode(r.png).decode("ascii")
    return (f'<figure id="fig-{escape(r.name)}"><img alt="{escape(r.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{escape(r.title)}.</b> {caption} '
            f'<a href="figures/{escape(r.name)}.svg">SVG</a></figcaption></figure>')


def page(title: str, nav: Sequence[tuple[str, str]], sections: Sequence[str]) -> str:
    links = "".join(f'<a href="#{escape(i)}">{escape(t)}</a>' for i, t in nav)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style>"
            f'<script>{SCRIPT}</script></head><body data-images-ok="pending">'
            f"<h1>{escape(title)}</h1><nav>{links}</nav>{''.join(sections)}</body></html>")
