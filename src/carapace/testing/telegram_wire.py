"""The wire side of the fake Telegram Bot API server (``fake_telegram``): Telegram's limits,
its HTML parse-mode check, API errors, request decoding and the HTTP handler."""

from __future__ import annotations

import email.parser
import email.policy
import html.parser
import json
import re
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carapace.testing.fake_telegram import FakeTelegram

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code",
                "pre", "tg-spoiler", "span", "blockquote", "tg-emoji"}  # fmt: skip


_BARE_AMP = re.compile(r"&(?!#\d+;|#x[0-9a-fA-F]+;|[a-zA-Z]+;)")


def utf16_len(text: str) -> int:
    """Telegram counts text in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


class ParseError(ValueError):
    pass


class _HTMLCheck(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            raise ParseError(f'Unsupported start tag "{tag}"')
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise ParseError(f'Unexpected end tag "{tag}"')
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> str:
    """The plain text a person sees for ``parse_mode=HTML`` text, or ``ParseError``: an
    unknown or unbalanced tag, or an ``&`` that does not start an entity."""
    bare = _BARE_AMP.search(text)
    if bare is not None:
        raise ParseError(
            f"Unsupported HTML entity at byte offset {len(text[: bare.start()].encode())}"
        )
    p = _HTMLCheck()
    p.feed(text)
    p.close()
    if p.stack:
        raise ParseError(f'Can\'t find end tag corresponding to start tag "{p.stack[-1]}"')
    return "".join(p.text)


class ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after


def decode_params(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else b""
    ctype = handler.headers.get("Content-Type") or ""
    raw: dict[str, Any] = {}
    if ctype.startswith("multipart/form-data"):
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True)
            payload = payload if isinstance(payload, bytes) else b""
            if filename is not None:
                raw[str(name)] = (filename, payload)
            else:
                raw[str(name)] = payload.decode("utf-8")
    elif ctype.startswith("application/json"):
        raw = json.loads(body or b"{}")
    else:
        raw = dict(urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        raw.update(urllib.parse.parse_qsl(urllib.parse.urlsplit(handler.path).query))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, str) and k in ("reply_markup", "reaction", "allowed_updates", "entities"):
            v = json.loads(v)
        elif isinstance(v, str) and v.startswith("attach://"):
            v = raw.get(v.removeprefix("attach://"), v)
        out[k] = v
    return out


def make_handler(tg: FakeTelegram) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (cancelled)
                self.close_connection = True

        def _route(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            prefix = f"/bot{tg.token}/"
            fprefix = f"/file/bot{tg.token}/"
            if path.startswith(fprefix):
                data = tg.file_data(path[len(fprefix) :])
                if data is None or tg.revoked:
                    self._reply(404, b"Not Found", "text/plain")
                else:
                    self._reply(200, data, "application/octet-stream")
                return
            if not path.startswith(prefix):
                self._reply(401, json.dumps({"ok": False, "error_code": 401,
                                             "description": "Unauthorized"}).encode())  # fmt: skip
                return
            method = path[len(prefix) :]
            try:
                params = decode_params(self)
                result = tg.call(method, params)
            except ApiError as exc:
                body: dict[str, Any] = {"ok": False, "error_code": exc.code,
                                        "description": exc.description}  # fmt: skip
                if exc.retry_after is not None:
                    body["parameters"] = {"retry_after": exc.retry_after}
                self._reply(exc.code, json.dumps(body).encode())
                return
            self._reply(200, json.dumps({"ok": True, "result": result}).encode())
            hook = tg.on_updates_returned
            if method == "getUpdates" and result and hook is not None:
                hook(result)

        def do_POST(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

    return Handler
