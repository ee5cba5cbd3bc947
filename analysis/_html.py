"""Building blocks of self-contained HTML pages: escaping, tables, diffs, embedded images.

Nothing here refers to anything outside the page: styles and scripts are inline, images
are data: URIs, and every piece of text that came from a trial (descriptions may be
written by an LLM) is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Iterable, Sequence

STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #222; margin: 0; }
main { max-width: 1280px; margin: 0 auto; padding: 12px 28px 60px; }
h1 { font-size: 24px; margin: 18px 0 4px; } h2 { font-size: 19px; margin: 34px 0 8px; border-bottom: 1px solid #ddd; }
.muted { color: #777; } .headline { font-size: 16px; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13px; } th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }
th { background: #f5f5f5; position: sticky; top: 0; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; } table.sortable th:hover { background: #e8e8e8; }
table.sortable th.asc::after { content: " \\25B2"; font-size: 10px; } table.sortable th.desc::after { content: " \\25BC"; font-size: 10px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 18px; margin: 0; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
pre.diff { background: #fafafa; border: 1px solid #eee; padding: 8px; overflow-x: auto; font-size: 12px; line-height: 1.35; }
pre.diff .add { color: #116329; background: #dafbe1; display: block; } pre.diff .del { color: #82071e; background: #ffebe9; display: block; }
pre.diff .hunk { color: #0550ae; display: block; }
tr.kept td { background: #fff8e1; } tr.failed td { color: #999; } td.good { color: #116329; } td.bad { color: #82071e; }
.walk td { vertical-align: top; } details summary { cursor: pointer; color: #0550ae; }
.lineage-box { border: 1px solid #ddd; overflow: hidden; background: #fff; cursor: grab; }
svg.lineage .edge { fill: none; stroke: #a0a0a0; stroke-width: 1.2; } svg.lineage .edge.path { stroke: #c0392b; stroke-width: 3; }
svg.lineage .edge.second { stroke: #8e44ad; stroke-dasharray: 4 3; }
svg.lineage circle { stroke: #333; stroke-width: 0.6; } svg.lineage .onpath circle { stroke: #c0392b; stroke-width: 2; }
svg.lineage .failed circle { fill: #c8c8c8; stroke: #888; } svg.lineage .dup circle { fill: #fff; stroke: #999; }
svg.lineage text { font-size: 10px; fill: #444; } svg.lineage .onpath text { fill: #c0392b; }
svg.lineage .bestlabel { font-weight: bold; fill: #c0392b; font-size: 12px; }
svg.lineage .fold rect { fill: #e0e0e0; stroke: #999; } svg.lineage .fold text { fill: #777; }
svg.lineage a:hover circle { stroke: #000; stroke-width: 2.5; }
.note { background: #f6f8fa; border-left: 4px solid #0969da; padding: 6px 12px; margin: 10px 0; }
"""

# Sorting for any table.sortable (numbers by data-v, text otherwise), and zoom/pan for the
# lineage SVG. Plain DOM code, no library.
SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = !th.classList.contains('asc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
      th.classList.add(asc ? 'asc' : 'desc');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col], y = b.cells[col];
        var u = x.getAttribute('data-v'), v = y.getAttribute('data-v');
        var r = (u !== null && v !== null) ? (parseFloat(u) - parseFloat(v)) : x.textContent.localeCompare(y.textContent);
        return asc ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
document.querySelectorAll('.lineage-box').forEach(function (box) {
  var svg = box.querySelector('svg'); if (!svg) return;
  var vb = svg.viewBox.baseVal, start = null;
  box.addEventListener('wheel', function (e) {
    e.preventDefault();
    var k = e.deltaY > 0 ? 1.15 : 1 / 1.15, r = svg.getBoundingClientRect();
    var px = vb.x + (e.clientX - r.left) / r.width * vb.width, py = vb.y + (e.clientY - r.top) / r.height * vb.height;
    vb.x = px - (px - vb.x) * k; vb.y = py - (py - vb.y) * k; vb.width *= k; vb.height *= k;
  }, { passive: false });
  box.addEventListener('mousedown', function (e) { start = [e.clientX, e.clientY, vb.x, vb.y]; box.style.cursor = 'grabbing'; });
  window.addEventListener('mouseup', function () { start = null; box.style.cursor = ''; });
  window.addEventListener('mousemove', function (e) {
    if (!start) return;
    var r = svg.getBoundingClientRect();
    vb.x = start[2] - (e.clientX - start[0]) / r.width * vb.width; vb.y = start[3] - (e.clientY - start[1]) / r.height * vb.height;
  });
});
"""


def esc(value) -> str:
    """HTML-escaped text of any value.

    Args:
        value: anything; None becomes an empty string.
    """
    return "" if value is None else html.escape(str(value))


def num(value, digits: int = 4, *, signed: bool = False) -> str:
    """A number for a table cell ("-" for None or not finite).

    Args:
        value: the number.
        digits: digits after the point.
        signed: always show the sign.
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def image(path: Path, alt: str) -> str:
    """An <img> holding the PNG at `path` as a data: URI.

    Args:
        path: a PNG file.
        alt: the alternative text.
    """
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="figure" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def diff_block(text: str) -> str:
    """A unified diff as a <pre> with added, removed and hunk lines coloured.

    Args:
        text: the diff.
    """
    out = []
    for line in text.rstrip("\n").splitlines():
        cls = ("add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else
               "hunk" if line.startswith("@@") else "")
        out.append(f'<span class="{cls}">{esc(line)}</span>' if cls else esc(line) + "\n")
    return '<pre class="diff">' + "".join(out) + "</pre>"


def table(headers: Sequence[tuple[str, bool]], rows: Iterable[Sequence], *, cls: str = "",
          row_attrs: Iterable[str] | None = None) -> str:
    """An HTML table.

    Args:
        headers: (title, numeric) per column; numeric columns are right-aligned.
        rows: cells per row; a cell is HTML (already escaped) or a (html, sort value)
            pair whose sort value goes into data-v for numeric sorting.
        cls: the table's class ("sortable" makes the headers sort it).
        row_attrs: extra attributes per row (e.g. ' id="trial-3" class="kept"').
    """
    head = "".join(f'<th class="num">{esc(h)}</th>' if n else f"<th>{esc(h)}</th>" for h, n in headers)
    attrs = iter(row_attrs or [])
    body = []
    for row in rows:
        cells = []
        for (_, numeric), cell in zip(headers, row):
            content, sort = cell if isinstance(cell, tuple) else (cell, None)
            data = f' data-v="{sort}"' if sort is not None else ""
            cells.append(f'<td class="num"{data}>{content}</td>' if numeric else f"<td{data}>{content}</td>")
        body.append(f"<tr{next(attrs, '')}>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>' + "\n".join(body) + "</tbody></table>"


def page(title: str, body: str) -> str:
    """A complete HTML document with the shared style and script inline.

    Args:
        title: the document title.
        body: the HTML inside <main>.
    """
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><main>\n{body}\n</main><script>{SCRIPT}</script></body></html>\n")
