"""Server-rendered HTML: escaping, the page layout, tables, pagination, an SVG bar chart.
No template engine, no build step; every value goes through ``esc``."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

NAV = (("/", "Overview"), ("/chat", "Chat"), ("/sessions", "Sessions"),
       ("/approvals", "Approvals"), ("/tasks", "Tasks"), ("/dropped", "Dropped"),
       ("/usage", "Usage"), ("/health", "Health"))  # fmt: skip


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, *, user: str | None = None, csrf: str | None = None,
         operator: bool = False, current: str = "", script: bool = True) -> str:  # fmt: skip
    links = "".join(
        f'<a href="{href}"{" aria-current=page" if href == current else ""}>{esc(label)}</a>'
        for href, label in NAV
        if operator or href == "/chat"
    )
    who = ""
    if user is not None:
        who = (f'<form method="post" action="/logout" class="logout">'
               f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
               f'<span>{esc(user)}</span> <button type="submit">Sign out</button></form>')  # fmt: skip
    meta = f'<meta name="csrf-token" content="{esc(csrf)}">' if csrf else ""
    js = '<script src="/static/app.js" defer></script>' if script else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · carapace</title>{meta}"
        f'<link rel="stylesheet" href="/static/app.css">{js}</head><body>'
        f'<header><a class="brand" href="/">carapace</a><nav aria-label="Main">{links}</nav>'
        f"{who}</header><main id=main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def when(ts: str | None) -> str:
    """A stored UTC timestamp as ``<time>``: readable text, the exact value in ``datetime``."""
    if not ts:
        return "—"
    text = str(ts).replace("T", " ")[:16] + " UTC"
    return f'<time datetime="{esc(ts)}">{esc(text)}</time>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, caption: str = "",
          empty: str = "Nothing here yet.") -> str:  # fmt: skip
    """``rows`` cells are HTML already (escape values with ``esc``)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")  # fmt: skip


def pager(path: str, params: dict[str, Any], page_no: int, has_next: bool) -> str:
    def link(n: int, label: str, rel: str) -> str:
        q = urlencode({**{k: v for k, v in params.items() if v not in (None, "")}, "page": n})
        return f'<a rel="{rel}" href="{esc(path)}?{esc(q)}">{esc(label)}</a>'

    parts = []
    if page_no > 1:
        parts.append(link(page_no - 1, "← Newer", "prev"))
    parts.append(f"<span>Page {page_no}</span>")
    if has_next:
        parts.append(link(page_no + 1, "Older →", "next"))
    return f'<nav class="pager" aria-label="Pages">{" ".join(parts)}</nav>'


def post_button(action: str, label: str, csrf: str, fields: dict[str, str] | None = None,
                *, cls: str = "") -> str:  # fmt: skip
    hidden = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in (fields or {}).items()
    )
    return (f'<form method="post" action="{esc(action)}" class="inline">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}">{hidden}'
            f'<button type="submit" class="{esc(cls)}">{esc(label)}</button></form>')  # fmt: skip


def bar_chart(title: str, series: Sequence[tuple[str, float]], *, unit: str = "") -> str:
    """A horizontal bar chart as inline SVG, with the numbers as text (and a table for
    screen readers in ``<desc>``)."""
    if not series:
        return f'<p class="empty">No {esc(title.lower())} recorded yet.</p>'
    top = max(v for _, v in series) or 1.0
    row_h, label_w, width = 22, 150, 560
    bars = []
    for i, (label, value) in enumerate(series):
        y = i * row_h
        w = max(1.0, (width - label_w - 90) * value / top)
        bars.append(
            f'<text x="0" y="{y + 15}" class="lbl">{esc(label[:22])}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" rx="2"></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" class="val">{esc(_num(value))}{esc(unit)}</text>'
        )
    desc = "; ".join(f"{label}: {_num(v)}{unit}" for label, v in series)
    h = row_h * len(series)
    return (f'<figure class="chart"><figcaption>{esc(title)}</figcaption>'
            f'<svg role="img" viewBox="0 0 {width} {h}" width="100%" aria-label="{esc(title)}">'
            f"<desc>{esc(desc)}</desc>{''.join(bars)}</svg></figure>")  # fmt: skip


def _num(v: float) -> str:
    if abs(v - round(v)) < 1e-9:
        return f"{round(v):,}"
    return f"{v:,.4f}" if abs(v) < 1 else f"{v:,.2f}"
