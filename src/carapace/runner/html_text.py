"""HTML to readable text for ``web_fetch``: the page's title and its text, with block
structure kept as line breaks, links shown with their targets, and scripts, styles and
other non-text elements skipped. Only the standard library's ``HTMLParser``."""

from __future__ import annotations

import re
import urllib.parse
from html.parser import HTMLParser

#: link targets worth showing (the schemes web_fetch itself can follow)
LINK_SCHEMES = ("http", "https")

_SKIP_TAGS = frozenset(
    {"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas"}
)
_BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "form",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "thead",
        "tfoot",
        "tr",
        "ul",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
    }
)
_PARAGRAPH_TAGS = frozenset(
    {"p", "pre", "blockquote", "table", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6"}
)
_LINE_TAGS = frozenset({"li", "tr", "dt", "dd"})
_VOID_TAGS = frozenset(
    {
        "br",
        "hr",
        "img",
        "input",
        "meta",
        "link",
        "area",
        "base",
        "col",
        "embed",
        "source",
        "track",
        "wbr",
    }
)


class _TextExtractor(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._skip_depth = 0
        self._in_title = False
        self._pre_depth = 0
        self._link: tuple[str, int] | None = None  # (href, len(parts) when the <a> opened)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
            return
        if tag in _SKIP_TAGS:
            if tag not in _VOID_TAGS:
                self._skip_depth += 1
            return
        if self._skip_depth:
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag in _PARAGRAPH_TAGS else "\n")
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                self.parts.append("#" * int(tag[1]) + " ")
            elif tag == "li":
                self.parts.append("- ")
            elif tag == "pre":
                self._pre_depth += 1
        elif tag in ("td", "th"):
            self.parts.append(" | ")
        elif tag == "a":
            href = dict(attrs).get("href") or ""
            url = urllib.parse.urljoin(self.base_url, href.strip()) if href else ""
            if urllib.parse.urlsplit(url).scheme in LINK_SCHEMES:
                self._link = (url, len(self.parts))
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self.parts.append(f" [image: {alt}] ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
            return
        if tag in _SKIP_TAGS:
            if self._skip_depth:
                self._skip_depth -= 1
            return
        if self._skip_depth:
            return
        if tag == "a" and self._link is not None:
            url, start = self._link
            self._link = None
            text = " ".join("".join(self.parts[start:]).split())
            if text and text != url:
                del self.parts[start:]
                self.parts.append(f" [{text}]({url}) ")
        elif tag in _BLOCK_TAGS:
            if tag == "pre" and self._pre_depth:
                self._pre_depth -= 1
            if tag not in _LINE_TAGS:  # items end where the next one starts
                self.parts.append("\n\n" if tag in _PARAGRAPH_TAGS else "\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif self._skip_depth:
            return
        elif self._pre_depth:
            # Protected from whitespace collapsing, restored in html_to_text.
            self.parts.append(data.replace("\n", "\x00").replace(" ", "\x01"))
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str, base_url: str = "") -> tuple[str, str]:
    """Return ``(title, text)`` for an HTML document."""
    parser = _TextExtractor(base_url)
    try:
        parser.feed(html)
        parser.close()
    except AssertionError:  # html.parser gives up on some malformed declarations
        pass
    title = " ".join("".join(parser.title_parts).split())
    lines = []
    for line in "".join(parser.parts).split("\n"):
        line = re.sub(r" {2,}", " ", line).strip().replace("\x00", "\n").replace("\x01", " ")
        lines.append(line)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return title, text
