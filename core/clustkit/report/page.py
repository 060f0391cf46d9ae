"""The report's HTML page: one self-contained file (inline CSS, no script, no external URL) that
opens from the run folder in any browser and links the PNGs by relative path."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["DIAGNOSTIC_MEANINGS", "render"]

DIAGNOSTIC_MEANINGS = {
    "size_entropy": "cluster-size entropy / log K: 1 = balanced, 0 = one cluster",
    "n_empty": "cluster ids with no member (K larger than the data fills)",
    "min_size_ratio": "smallest cluster / balanced size (near 0: a starved cluster)",
    "max_size_ratio": "largest cluster / balanced size (well above 1: merged groups)",
    "silhouette": "cosine silhouette on a sample of the features, -1..1 (higher: tighter, better separated)",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; margin-top: .3em; }
.note { color: #777; font-size: .85em; }
"""


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def render(title: str, summary: dict[str, Any] | None, diagnostics: dict[str, Any] | None,
           figures: Sequence[tuple[str, str]], note: str = "") -> str:
    """The page: title, the summary's scalar entries, the diagnostics, then one figure per
    ``(relative image path, caption)``. Every piece of text is escaped."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>"]
    if note:
        parts.append(f'<p class="note">{e(note)}</p>')
    if summary:
        rows = [(str(k), v) for k, v in summary.items() if _is_scalar(v)]
        if rows:
            parts += ["<h2>Summary</h2>", _table(rows, ("key", "value"))]
    if diagnostics:
        rows = [(k, v, DIAGNOSTIC_MEANINGS.get(k, "")) for k, v in diagnostics.items()]
        parts += ["<h2>Cluster diagnostics (label-free)</h2>", _table(rows, ("diagnostic", "value", "meaning"))]
    if figures:
        parts.append("<h2>Figures</h2>")
        for src, caption in figures:
            parts.append(f'<figure><img src="{e(src, quote=True)}" alt="{e(caption, quote=True)}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    else:
        parts.append('<p class="note">No figures yet.</p>')
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
