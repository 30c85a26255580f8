"""The ``web_fetch`` tool's engine: fetch one http(s) URL and turn it into readable text.

stdlib only (``urllib.request`` and ``html.parser``). The body is read up to a byte cap
within a wall-clock deadline; HTML becomes plain text (scripts and styles dropped,
whitespace collapsed, links kept as ``[text](url)``), other text types are returned as
they are and binary bodies are refused. Redirects are followed only to http(s) URLs.

Address policy where the connection is made: each connection (the first and every
redirect's) resolves the host name once, checks every address it got (with
``allow_private`` False, loopback, private, link-local and other non-public addresses are
refused) and connects to a checked address; TLS still verifies the certificate against
the host name (SNI and ``Host`` are the name). A name that resolves differently on a
second lookup (DNS rebinding) cannot move the connection. Proxy variables are ignored.

In a runner with the host's egress proxy (``CARAPACE_PROXY_SOCKET``), ``fetch_via_host``
asks the host to fetch instead: the sandbox has no network of its own, and the host
applies the group's ``web``/``web_private`` settings as it reads them from its DB.
"""

from __future__ import annotations

import codecs
import functools
import http.client
import ipaddress
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import IO, Any

from carapace.runner.html_text import html_to_text
from carapace.runner.providers.base import ToolResult

USER_AGENT = "carapace-web-fetch/0.1 (+https://github.com/)"
ALLOWED_SCHEMES = ("http", "https")
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_APPLICATION_TYPES = (
    "application/json",
    "application/ld+json",
    "application/xml",
    "application/javascript",
    "application/ecmascript",
    "application/x-javascript",
    "application/x-yaml",
    "application/yaml",
    "application/toml",
    "application/x-sh",
    "application/sql",
    "application/graphql",
    "application/x-www-form-urlencoded",
    "application/rss+xml",
    "application/atom+xml",
)
_CHUNK = 64 * 1024
_ERROR_BODY_CHARS = 2_000


Resolver = Callable[..., list[tuple[Any, ...]]]


class AddressRefused(OSError):
    """The host name resolved to an address the policy refuses."""


def is_non_public(address: str) -> bool:
    """A loopback, private, link-local, multicast or otherwise non-global address."""
    addr = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not addr.is_global or addr.is_multicast


def pinned_connector(
    allow_private: bool,
    resolve: Resolver = socket.getaddrinfo,
    non_public: Callable[[str], bool] = is_non_public,
) -> Callable[..., socket.socket]:
    """A ``socket.create_connection`` stand-in: one lookup, every address checked, then a
    connection to a checked address (never a second lookup)."""

    def connect(
        address: tuple[str, int],
        timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: Any = None,
        **_: Any,
    ) -> socket.socket:
        host, port = address
        infos = resolve(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        if not infos:
            raise OSError(f"{host} does not resolve")
        if not allow_private:
            for info in infos:
                if non_public(str(info[4][0])):
                    raise AddressRefused(
                        f"{host} resolves to a local or private-network address "
                        f"({info[4][0]}); web_fetch reaches only public addresses unless "
                        "the group's settings set web_private: true"
                    )
        error: OSError | None = None
        for family, kind, proto, _name, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                error = exc
                sock.close()
        raise error or OSError(f"cannot connect to {host}")

    return connect


class _PinnedHTTP(http.client.HTTPConnection):
    connector: Callable[..., socket.socket] = staticmethod(socket.create_connection)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = type(self).connector


class _PinnedHTTPS(http.client.HTTPSConnection):
    connector: Callable[..., socket.socket] = staticmethod(socket.create_connection)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = type(self).connector


def _pinned_handlers(
    allow_private: bool, resolve: Resolver, non_public: Callable[[str], bool]
) -> list[urllib.request.BaseHandler]:
    connector = staticmethod(pinned_connector(allow_private, resolve, non_public))
    http_cls = type("PinnedHTTP", (_PinnedHTTP,), {"connector": connector})
    https_cls = type("PinnedHTTPS", (_PinnedHTTPS,), {"connector": connector})

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(http_cls, req)  # type: ignore[arg-type]

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(
                functools.partial(https_cls, context=self._context),  # type: ignore[attr-defined]
                req,
            )

    return [urllib.request.ProxyHandler({}), HTTP(), HTTPS()]


def private_address(host: str) -> str | None:
    """The first loopback, private, link-local or otherwise non-public address ``host``
    resolves to, or None when every address is public (or the name does not resolve:
    the fetch then fails on its own)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_global or addr.is_multicast:
            return str(addr)
    return None


def _private_refusal(url: str) -> str | None:
    host = urllib.parse.urlsplit(url).hostname or ""
    addr = private_address(host)
    if addr is None:
        return None
    return (
        f"{host} resolves to a local or private-network address ({addr}); web_fetch reaches "
        "only public addresses unless the group's settings set web_private: true"
    )


class _RefusingRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s) URLs (urllib would also follow ``ftp:``), and, unless
    private addresses are allowed, only to hosts with public addresses."""

    def __init__(self, allow_private: bool = True) -> None:
        super().__init__()
        self.allow_private = allow_private

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise urllib.error.URLError(f"redirect to a non-http(s) URL refused: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def check_url(url: str) -> str | None:
    """Return why ``url`` is refused, or None when it is a fetchable http(s) URL."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return "the URL contains whitespace or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        return f"the URL does not parse ({exc})"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        shown = parts.scheme or "(none)"
        return f"only http and https URLs can be fetched, not scheme {shown!r}"
    if not parts.hostname:
        return "the URL has no host"
    return None


def fetch(
    url: str,
    *,
    max_chars: int,
    max_bytes: int,
    timeout_s: float,
    allow_private: bool = True,
    resolve: Resolver = socket.getaddrinfo,
    non_public: Callable[[str], bool] = is_non_public,
) -> ToolResult:
    """Fetch ``url`` and return its readable text; never raises for network trouble.

    With ``allow_private`` False, hosts resolving to loopback, private-network, link-local
    or other non-public addresses are refused (also on redirects), so an agent cannot use
    the fetch to reach services on the host or its network.
    """
    problem = check_url(url)
    if problem is not None:
        return ToolResult(f"Cannot fetch {url!r}: {problem}.", is_error=True)
    # Non-ASCII paths would make http.client raise; percent-encode them, keep the rest.
    quoted = urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")
    request = urllib.request.Request(quoted, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
    opener = urllib.request.build_opener(
        *_pinned_handlers(allow_private, resolve, non_public), _RefusingRedirects(allow_private)
    )
    deadline = time.monotonic() + timeout_s
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body, overflow = _read_capped(response, max_bytes, deadline)
            return _render(
                response.status,
                response.reason,
                response.geturl(),
                response.headers,
                body,
                overflow,
                max_chars,
                max_bytes,
            )
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:  # a redirect urllib would not follow
            exc.close()
            return ToolResult(f"Cannot fetch {url}: {exc.reason}.", is_error=True)
        try:
            body, overflow = _read_capped(exc, min(max_bytes, 256 * 1024), deadline)
        except (OSError, http.client.HTTPException, TimeoutError):
            body, overflow = b"", False
        finally:
            exc.close()
        rendered = _render(
            exc.code,
            str(exc.reason),
            exc.geturl() or url,
            exc.headers,
            body,
            overflow,
            _ERROR_BODY_CHARS,
            max_bytes,
        )
        return ToolResult(f"HTTP error {exc.code} {exc.reason}.\n{rendered.content}", is_error=True)
    except AddressRefused as exc:
        return ToolResult(f"Cannot fetch {url!r}: {exc}.", is_error=True)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, AddressRefused):
            return ToolResult(f"Cannot fetch {url!r}: {exc.reason}.", is_error=True)
        if isinstance(exc.reason, TimeoutError):
            return ToolResult(f"Cannot fetch {url}: timed out after {timeout_s:g} s.", True)
        return ToolResult(f"Cannot fetch {url}: {exc.reason}.", is_error=True)
    except TimeoutError:
        return ToolResult(f"Cannot fetch {url}: timed out after {timeout_s:g} s.", is_error=True)
    except (OSError, http.client.HTTPException, ValueError, UnicodeError) as exc:
        return ToolResult(f"Cannot fetch {url}: {type(exc).__name__}: {exc}.", is_error=True)


def fetch_via_host(
    socket_path: str, url: str, *, max_chars: int, max_bytes: int, timeout_s: float
) -> ToolResult:
    """Ask the host's egress proxy to fetch ``url`` (the sandbox has no network)."""
    conn = _UnixHTTPConnection(socket_path, timeout=timeout_s + 15)
    body = json.dumps(
        {"url": url, "max_chars": max_chars, "max_bytes": max_bytes, "timeout_s": timeout_s}
    )
    try:
        conn.request("POST", "/_carapace/web_fetch", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        doc = json.loads(data) if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return ToolResult(f"Cannot fetch {url}: the host's fetch failed ({exc}).", True)
    finally:
        conn.close()
    if not isinstance(doc, dict) or not isinstance(doc.get("content"), str):
        return ToolResult(f"Cannot fetch {url}: the host refused the request.", True)
    return ToolResult(doc["content"], is_error=bool(doc.get("is_error")))


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("carapace-proxy", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _read_capped(response: IO[bytes], max_bytes: int, deadline: float) -> tuple[bytes, bool]:
    """Read at most ``max_bytes``; the bool says the body was longer. Honours ``deadline``."""
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        if time.monotonic() > deadline:
            raise TimeoutError("deadline passed while reading the body")
        chunk = response.read(min(_CHUNK, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    return body[:max_bytes], len(body) > max_bytes


def _render(
    status: int,
    reason: str,
    final_url: str,
    headers: Any,
    body: bytes,
    overflow: bool,
    max_chars: int,
    max_bytes: int,
) -> ToolResult:
    content_type = (headers.get_content_type() if headers is not None else "") or ""
    raw_type = (headers.get("Content-Type") if headers is not None else None) or "(none)"
    charset = headers.get_content_charset() if headers is not None else None
    lines = [
        f"URL: {final_url}",
        f"Status: {status} {reason}".rstrip(),
        f"Content-Type: {raw_type}",
    ]
    kind = _classify(content_type, body)
    if kind == "binary":
        lines.append(
            f"\nThe response is binary ({content_type or 'unknown type'}, "
            f"{len(body)}{'+' if overflow else ''} bytes) and is not shown."
        )
        return ToolResult("\n".join(lines), is_error=True)
    text = _decode(body, charset, html=kind == "html")
    if kind == "html":
        title, text = html_to_text(text, base_url=final_url)
        if title:
            lines.append(f"Title: {title}")
    notes: list[str] = []
    if overflow:
        notes.append(
            f"[The body exceeded {max_bytes} bytes; only the first {max_bytes} were read.]"
        )
    if len(text) > max_chars:
        notes.append(
            f"[Truncated: showing the first {max_chars} of {len(text)} characters; "
            "pass a larger max_chars to see more.]"
        )
        text = text[:max_chars]
    return ToolResult("\n".join([*lines, "", text, *notes]).rstrip() + "\n")


def _classify(content_type: str, body: bytes) -> str:
    """``html``, ``text`` or ``binary``."""
    if content_type in _HTML_TYPES:
        return "html"
    main, _, sub = content_type.partition("/")
    if main == "text" or content_type in _TEXT_APPLICATION_TYPES:
        return "text"
    if sub.endswith(("+json", "+xml")):
        return "text"
    if main in ("image", "audio", "video", "font", "model"):
        return "binary"
    if main == "application" and content_type not in ("application/octet-stream", ""):
        return "binary"
    # Unknown or octet-stream (and the parser's text/plain default): sniff the start.
    head = body[:4096]
    if b"\x00" in head:
        return "binary"
    if re.match(rb"\s*(<!doctype html|<html)", head, re.IGNORECASE):
        return "html"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the sniff boundary
            return "binary"
    return "text"


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)


def _decode(body: bytes, charset: str | None, *, html: bool) -> str:
    if charset is None and html:
        found = _META_CHARSET.search(body[:4096])
        if found:
            charset = found.group(1).decode("ascii", "replace")
    if body.startswith(codecs.BOM_UTF8):
        charset = "utf-8-sig"
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError:
        charset = None
    return body.decode(charset or "utf-8", errors="replace")
