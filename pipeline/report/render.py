"""One document model rendered twice: Markdown (report.md) and a self-contained HTML page.

The report is built as a list of blocks (headings, paragraphs, tables, images) so both outputs
always say the same thing; the HTML inlines its CSS and embeds the PNGs as data URIs, so the page
opens offline and can be mailed as one file.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # right-aligned (numeric) column indices


@dataclass
class Image:
    path: Path  # a PNG next to the report
    alt: str


Block = Union[Heading, Para, Bullets, Table, Image]


def fmt(x: Any, digits: int = 2, *, thousands: bool = False, pct: bool = False) -> str:
    """A number for a table cell: NaN/None as an en dash, infinities spelled out."""
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if thousands:
        return f"{v:,.0f}"
    text = f"{v:.{digits}f}"
    return f"{text} %" if pct else text


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in b.headers) + " |",
                     "|" + "|".join("---:" if i in b.right else "---" for i in range(len(b.headers))) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.path.name})")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.86em;margin:.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #d0d0d0;padding:.25em .55em;white-space:nowrap}th{background:#f2f2f2;text-align:left}
td.r{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #e4e4e4;margin:.4em 0}code{background:#f3f3f3;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """Escape, then turn Markdown `code` spans into <code> (the only inline markup the report uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td class=\"r\">{_inline(c)}</td>" if i in b.right
                                             else f"<td>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                           for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            body.append(f"<figure><img alt=\"{html.escape(b.alt)}\" src=\"data:image/png;base64,{data}\">"
                        f"<figcaption>{_inline(b.alt)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
