"""The runner's MCP client: the group's ``mcp_servers``, their tools offered to the model.

``container.json`` ``mcpServers`` is NanoClaw's map ``{name: {command, args, env}}`` for a
stdio server, or ``{name: {url, type?: "http"}}`` for a streamable-HTTP one. ``McpHub``
starts every server when the runner starts (in a background thread with its own event
loop; the runner's turn loop stays synchronous) and offers each server's tools to the
model as ``mcp__<server>__<tool>`` (characters outside ``[A-Za-z0-9_-]`` become ``_``, as
NanoClaw does), for every provider.

* stdio servers are child processes of the runner, so they live in the runner's sandbox
  (bwrap: no network unless the group has ``network: true``; cwd is the group folder).
  Each runs in its own session; the ``bash`` tool's after-command cleanup spares them
  (``procs.spare_session``). Their stderr is logged line by line (``mcp[<name>]: …``).
* HTTP servers are reached through the host's egress proxy when there is one
  (``/_carapace/mcp/<name>``): the runner names the server, the host connects to the URL
  in the group's config as it reads it from its DB (``carapace.proxy.mcp_route``). Without
  a proxy (an unsandboxed development runner) the runner connects to the URL itself.

A server that fails to start, crashes or stops answering never takes the runner down: its
tools answer with an error that says what happened, a log line is written, and the server
is restarted with exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``).
A tool's result keeps its text and its images (``ToolResult.images``); other content kinds
become a one-line placeholder.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from carapace.log import get_logger
from carapace.runner.mcp_config import ServerConfig, safe_name
from carapace.runner.procs import spare_session, unspare_session
from carapace.runner.providers.base import ToolResult, ToolSpec

logger = get_logger(__name__)

PREFIX = "mcp__"
MCP_ROUTE = "/_carapace/mcp/"
MAX_IMAGE_B64 = 1_500_000  # characters of base64 per image kept in a tool result
MAX_TEXT = 100_000
# passed to stdio servers besides the SDK's defaults (HOME, PATH, …); never a proxy socket
_PASSED_ENV = frozenset({"CARAPACE_SANDBOX", "TZ", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR"})
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


@dataclass
class _Server:
    config: ServerConfig
    tools: dict[str, ToolSpec] = field(default_factory=dict)  # exposed name -> spec
    remote: dict[str, str] = field(default_factory=dict)  # exposed name -> server's tool name
    session: Any = None
    error: str | None = None
    attempts: int = 0
    retry_at: float | None = None
    tried: threading.Event = field(default_factory=threading.Event)
    down: asyncio.Event | None = None
    sid: int | None = None
    server_instructions: str = ""


class McpHub:
    """Every MCP server of one runner. Thread-safe entry points: ``start``, ``wait_started``,
    ``specs``, ``knows``, ``call``, ``close``."""

    def __init__(
        self,
        servers: list[ServerConfig],
        *,
        cwd: Path,
        proxy_socket: str | None = None,
        start_timeout_s: float = 20.0,
        call_timeout_s: float = 120.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        ping_interval_s: float = 10.0,
    ) -> None:
        self.cwd = cwd
        self.proxy_socket = proxy_socket
        self.start_timeout_s = start_timeout_s
        self.call_timeout_s = call_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.ping_interval_s = ping_interval_s
        self._servers = {s.name: _Server(s) for s in servers}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stopped = threading.Event()
        self._reset_backoff: set[str] = set()

    @property
    def names(self) -> list[str]:
        return list(self._servers)

    # --- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None or not self._servers:
            return
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            tasks = [loop.create_task(self._supervise(s)) for s in self._servers.values()]
            ready.set()
            try:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            finally:
                loop.close()
                self._stopped.set()

        self._thread = threading.Thread(target=run, name="mcp", daemon=True)
        self._thread.start()
        ready.wait()
        for s in self._servers.values():
            logger.info("Additional MCP server: %s (%s)", s.config.name,
                        s.config.command or s.config.url)  # fmt: skip

    def wait_started(self, timeout_s: float | None = None) -> None:
        """Wait (bounded) until every server's first start attempt has ended."""
        deadline = time.monotonic() + (self.start_timeout_s if timeout_s is None else timeout_s)
        for s in self._servers.values():
            s.tried.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float = 10.0) -> None:
        self._closing = True
        loop = self._loop
        if loop is None or self._thread is None:
            return
        for s in self._servers.values():
            down = s.down
            if down is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(down.set)
        self._thread.join(timeout_s)

    # --- the model's view ------------------------------------------------------------------
    def specs(self) -> list[ToolSpec]:
        self.wait_started()
        out: list[ToolSpec] = []
        for s in self._servers.values():
            out.extend(s.tools.values())
        return out

    def by_server(self) -> dict[str, list[ToolSpec]]:
        """The tools grouped by server (its ``mcp__<server>__`` name part), for a provider
        that hands each server to the model as its own (``claude``)."""
        self.wait_started()
        return {safe_name(name): list(s.tools.values()) for name, s in self._servers.items()}

    def knows(self, name: str) -> bool:
        return name.startswith(PREFIX) and self._owner(name) is not None

    def _owner(self, name: str) -> _Server | None:
        for s in self._servers.values():
            if name in s.tools or name.startswith(f"{PREFIX}{safe_name(s.config.name)}__"):
                return s
        return None

    def prompt_section(self) -> str:
        """The system prompt's part about the MCP servers: each one's state and instructions
        (the entry's own, then what the server said at initialize)."""
        self.wait_started()
        lines = ["## MCP servers", ""]
        for name, s in self._servers.items():
            prefix = f"{PREFIX}{safe_name(name)}__"
            state = (f"running, tools {prefix}*" if s.session is not None
                     else f"not running ({s.error or 'not started'}); its tools return errors")  # fmt: skip
            lines.append(f"- {name}: {state}")
            for text in (s.config.instructions, s.server_instructions):
                if text:
                    lines += [f"  {line}" for line in text.strip().splitlines()[:60]]
        return "\n".join(lines)

    def status(self) -> dict[str, str]:
        """``{server: "up (n tools)" | "down: <why>"}`` for logs and tests."""
        out = {}
        for name, s in self._servers.items():
            out[name] = f"up ({len(s.tools)} tools)" if s.session else f"down: {s.error}"
        return out

    def call(self, name: str, args: dict[str, Any]) -> ToolResult:
        server = self._owner(name)
        if server is None:
            return ToolResult(f"Unknown tool: {name}", is_error=True)
        label = server.config.name
        server.tried.wait(self.start_timeout_s)
        if server.session is None or self._loop is None:
            wait = ""
            if server.retry_at is not None:
                wait = (
                    f"; next start attempt in {max(0.0, server.retry_at - time.monotonic()):.0f} s"
                )
            return ToolResult(f"Error: MCP server {label!r} is not running "
                              f"({server.error or 'not started yet'}){wait}.", is_error=True)  # fmt: skip
        remote = server.remote.get(name)
        if remote is None:
            return ToolResult(f"Error: MCP server {label!r} has no tool {name!r}.", is_error=True)
        future = asyncio.run_coroutine_threadsafe(self._call(server, remote, args), self._loop)
        try:
            return future.result(self.call_timeout_s + 5)
        except Exception as exc:  # the tool boundary: never raise into the turn loop
            future.cancel()
            logger.warning("MCP server %s: tool %s failed: %s", label, remote, exc)
            return ToolResult(f"Error: MCP server {label!r} did not answer {remote!r}: "
                              f"{type(exc).__name__}.", is_error=True)  # fmt: skip

    # --- the event-loop side ---------------------------------------------------------------
    async def _call(self, server: _Server, tool: str, args: dict[str, Any]) -> ToolResult:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        label = server.config.name
        session = server.session
        try:
            result = await asyncio.wait_for(
                session.call_tool(tool, args), timeout=self.call_timeout_s
            )
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                return ToolResult(f"Error: {label}/{tool}: {exc.error.message}", is_error=True)
            return self._lost(server, tool, "the connection closed (the server crashed or exited)")
        except TimeoutError:
            return self._lost(server, tool, f"no answer within {self.call_timeout_s:g} s")
        except Exception as exc:
            return self._lost(server, tool, f"{type(exc).__name__}: {exc}")
        return convert_result(result)

    def _lost(self, server: _Server, tool: str, why: str) -> ToolResult:
        label = server.config.name
        logger.warning("MCP server %s failed during %s: %s; restarting it", label, tool, why)
        server.error = why
        if server.session is not None:
            server.session = None  # no new call goes to it; the supervisor restarts it
        if server.down is not None:
            server.down.set()
        return ToolResult(f"Error: MCP server {label!r} failed during {tool!r}: {why}. It is "
                          "being restarted; try again later.", is_error=True)  # fmt: skip

    async def _supervise(self, server: _Server) -> None:
        delay = self.backoff_s
        while not self._closing:
            server.attempts += 1
            server.down = asyncio.Event()
            try:
                await self._serve(server)
            except Exception as exc:
                server.error = _one_line(exc)
                if server.config.url and self.proxy_socket:
                    server.error = await self._proxy_reason(server) or server.error
                logger.warning("MCP server %s: %s", server.config.name, server.error)
            finally:
                server.session = None
                if server.sid is not None:
                    unspare_session(server.sid)
                    server.sid = None
                server.tried.set()
            if self._closing:
                break
            if server.config.name in self._reset_backoff:
                delay = self.backoff_s
            server.retry_at = time.monotonic() + delay
            logger.info("MCP server %s: restart in %.1f s (attempt %d)", server.config.name,
                        delay, server.attempts + 1)  # fmt: skip
            end = time.monotonic() + delay
            while not self._closing and time.monotonic() < end:
                await asyncio.sleep(min(0.1, end - time.monotonic()))
            if server.config.name in self._reset_backoff:  # it ran: a crash starts over
                self._reset_backoff.discard(server.config.name)
                delay = self.backoff_s
            delay = min(delay * 2, self.max_backoff_s)

    async def _serve(self, server: _Server) -> None:
        from mcp.client.session import ClientSession

        async with contextlib.AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport(server))
            session = await stack.enter_async_context(ClientSession(read, write))
            init = await asyncio.wait_for(session.initialize(), self.start_timeout_s)
            text = getattr(init, "instructions", None)
            server.server_instructions = text[:4000] if isinstance(text, str) else ""
            listed = await asyncio.wait_for(self._list_tools(session), self.start_timeout_s)
            server.tools, server.remote = _exposed(server.config.name, listed)
            server.session, server.error, server.retry_at = session, None, None
            server.tried.set()
            self._reset_backoff.add(server.config.name)
            logger.info("MCP server %s started with %d tools: %s", server.config.name,
                        len(listed), ", ".join(t.name for t in listed))  # fmt: skip
            assert server.down is not None
            while not server.down.is_set() and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.down.wait(), self.ping_interval_s)
                if server.down.is_set() or self._closing:
                    break
                try:
                    await asyncio.wait_for(session.send_ping(), self.ping_interval_s)
                except Exception as exc:
                    server.error = f"stopped answering ({type(exc).__name__})"
                    logger.warning("MCP server %s %s; restarting it", server.config.name,
                                   server.error)  # fmt: skip
                    break

    async def _proxy_reason(self, server: _Server) -> str | None:
        """The host proxy's one-line refusal for this server (the SDK hides error bodies)."""
        import httpx2

        url = f"http://carapace-proxy{MCP_ROUTE}{quote(server.config.name, safe='')}"
        try:
            transport = httpx2.AsyncHTTPTransport(uds=self.proxy_socket)
            async with httpx2.AsyncClient(transport=transport, timeout=10.0) as client:
                resp = await client.post(url, content=b"{}",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            doc = resp.json() if resp.status_code >= 400 else None
        except Exception:
            return None
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return f"the host refused it ({resp.status_code}): {doc['error']}"[:300]
        return None

    async def _list_tools(self, session: Any) -> list[Any]:
        tools: list[Any] = []
        cursor: str | None = None
        for _ in range(50):
            from mcp_types import PaginatedRequestParams

            params = PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    @contextlib.asynccontextmanager
    async def _transport(self, server: _Server) -> AsyncIterator[tuple[Any, Any]]:
        cfg = server.config
        if cfg.url:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            timeout = httpx2.Timeout(30.0, read=300.0)
            if self.proxy_socket:
                url = f"http://carapace-proxy{MCP_ROUTE}{quote(cfg.name, safe='')}"
                client = httpx2.AsyncClient(
                    transport=httpx2.AsyncHTTPTransport(uds=self.proxy_socket), timeout=timeout
                )
            else:
                url = cfg.url
                client = httpx2.AsyncClient(headers=dict(cfg.headers), timeout=timeout)
            async with client, streamable_http_client(url, http_client=client) as streams:
                yield streams[0], streams[1]
            return
        from mcp.client.stdio import StdioServerParameters, stdio_client

        rfd, wfd = os.pipe()
        errlog = os.fdopen(wfd, "w", encoding="utf-8", errors="replace")
        reader = threading.Thread(target=_log_stderr, args=(cfg.name, rfd), daemon=True)
        reader.start()
        try:
            env = {k: v for k, v in os.environ.items() if k in _PASSED_ENV} | dict(cfg.env)
            params = StdioServerParameters(command=cfg.command or "", args=list(cfg.args),
                                           env=env, cwd=str(self.cwd))  # fmt: skip
            async with stdio_client(params, errlog=errlog) as streams:
                server.sid = _child_with_stderr(os.fstat(wfd).st_ino)
                if server.sid is not None:
                    spare_session(server.sid)
                errlog.close()  # the child holds its copy: EOF on the pipe when it exits
                yield streams[0], streams[1]
        finally:
            with contextlib.suppress(OSError):
                errlog.close()


def _exposed(server: str, listed: list[Any]) -> tuple[dict[str, ToolSpec], dict[str, str]]:
    specs: dict[str, ToolSpec] = {}
    remote: dict[str, str] = {}
    for tool in listed:
        exposed = f"{PREFIX}{safe_name(server)}__{safe_name(tool.name)}"[:64]
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
        schema = schema or {"type": "object", "properties": {}}
        desc = tool.description or tool.title or f"{tool.name} (MCP server {server})"
        specs[exposed] = ToolSpec(exposed, desc, dict(schema))
        remote[exposed] = tool.name
    return specs, remote


def convert_result(result: Any) -> ToolResult:
    """An MCP ``CallToolResult`` as a ``ToolResult``: text joined, images kept."""
    texts: list[str] = []
    images: list[dict[str, str]] = []
    for item in result.content or ():
        kind = getattr(item, "type", "")
        if kind == "text":
            texts.append(item.text)
        elif kind == "image":
            mime = str(item.mime_type or "").lower()
            data = str(item.data or "")
            if mime not in _IMAGE_TYPES:
                texts.append(f"[image of type {mime or 'unknown'} omitted: not a type models take]")
            elif len(data) > MAX_IMAGE_B64 or not _is_b64(data):
                texts.append("[image omitted: too large or not valid base64]")
            else:
                images.append({"media_type": mime, "data": data})
        elif kind == "resource":
            res = item.resource
            text = getattr(res, "text", None)
            texts.append(text if isinstance(text, str) else f"[binary resource {res.uri}]")
        elif kind == "resource_link":
            texts.append(f"[resource {item.uri}]")
        else:
            texts.append(f"[{kind or 'unknown'} content omitted]")
    if not texts and not images and result.structured_content is not None:
        texts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(texts)
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"\n[... {len(text) - MAX_TEXT} characters cut]"
    if not text:
        text = (
            f"({len(images)} image{'s' if len(images) != 1 else ''})" if images else "(no output)"
        )
    return ToolResult(text, is_error=bool(result.is_error), images=tuple(images))


def _is_b64(data: str) -> bool:
    try:
        base64.b64decode(data[:4096] + "=" * (-len(data[:4096]) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _one_line(exc.exceptions[0])
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        text = f"command not found ({exc.filename or text})"
    return text[:300]


def _log_stderr(name: str, fd: int) -> None:
    with os.fdopen(fd, "rb") as f:
        for n, raw in enumerate(f):
            if n < 1000:
                logger.info("mcp[%s]: %s", name, raw.decode("utf-8", "replace").rstrip()[:500])


def _child_with_stderr(inode: int) -> int | None:
    """The session id of our child whose stderr is the pipe ``inode`` (the server just
    started): no other process can hold that pipe, so the match is exact."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != me:
                continue
            if os.readlink(f"/proc/{name}/fd/2") == f"pipe:[{inode}]":
                return int(fields[3])
        except (OSError, ValueError, IndexError):
            continue
    return None
