"""The admin socket ``data/ncl.sock`` and the host's ``AdminContext`` (spec §8.1).

Mode 0600, stale file unlinked at start, peer uid must be ours, one line-delimited JSON
request per connection. Requests run in a worker thread with their own central-DB
connection; anything that touches runners hops back onto the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import struct
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import TYPE_CHECKING, Any

from carapace.config import Home, Settings
from carapace.db.connection import connect
from carapace.db.sessions import list_sessions
from carapace.host.sessions import SessionManager
from carapace.jsonutil import dumps
from carapace.timefmt import iso, new_id
from carapace.unixsock import start_private_server

if TYPE_CHECKING:
    from carapace.host.host import Host

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024
LOOP_CALL_TIMEOUT_S = 30.0


#: ``carapace.admin.dispatch.dispatch``'s shape, as the host calls it
AdminDispatch = Callable[["HostAdminContext", dict[str, Any], dict[str, Any]], dict[str, Any]]


class HostAdminContext:
    """``AdminContext`` for requests handled inside a running host (``live`` True)."""

    live = True

    def __init__(self, host: Host, loop: asyncio.AbstractEventLoop, db: sqlite3.Connection) -> None:
        self.host = host
        self.loop = loop
        self.home: Home = host.home
        self.settings: Settings = host.settings
        self.db = db
        self.sessions = SessionManager(host.home, db)

    def now(self) -> datetime:
        return self.host.now()

    def _on_loop(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(LOOP_CALL_TIMEOUT_S)

    def restart_group(self, agent_group_id: str, message: str | None = None) -> int:
        return int(self._on_loop(self.host_restart_group(agent_group_id, message)))

    async def host_restart_group(self, agent_group_id: str, message: str | None) -> int:
        host = self.host
        n = 0
        for s in list_sessions(host.db, agent_group_id=agent_group_id, status="active"):
            if not host.pool.is_running(s.id):
                continue
            if message:
                host.sessions.write_message(
                    s,
                    {
                        "id": new_id("restart", host.now()), "kind": "chat",
                        "timestamp": iso(host.now()), "platform_id": agent_group_id,
                        "channel_type": "agent", "on_wake": 1,
                        "content": dumps({"text": message, "sender": "system",
                                          "senderId": "system"}),
                    },
                    now=host.now(),
                )  # fmt: skip
            await host.pool.stop(s.id, "restart")
            n += 1
            if message:
                host.wake(s.id)
        return n

    def stop_session(self, session_id: str) -> bool:
        return bool(self._on_loop(self.host.pool.stop(session_id, "admin")))

    def wake_session(self, session_id: str) -> None:
        self.loop.call_soon_threadsafe(self.host.wake, session_id)


def _unknown(frame: dict[str, Any], message: str) -> dict[str, Any]:
    return {"id": frame.get("id"), "ok": False,
            "error": {"code": "unknown-command", "message": message}}  # fmt: skip


def dispatch_in_thread(
    host: Host, loop: asyncio.AbstractEventLoop, frame: dict[str, Any], caller: dict[str, Any]
) -> dict[str, Any]:
    """Run the host's admin dispatcher with a fresh DB connection."""
    dispatch = host.admin_dispatch
    if dispatch is None:
        return _unknown(frame, "this host was started without the admin commands")
    db = connect(host.home.central_db, "central", check_same_thread=False)
    try:
        ctx = HostAdminContext(host, loop, db)
        result: dict[str, Any] = dispatch(ctx, frame, caller)
        return result
    except Exception as exc:
        logger.exception("admin command %s failed", frame.get("command"))
        return {"id": frame.get("id"), "ok": False,
                "error": {"code": "handler-error", "message": str(exc)}}  # fmt: skip
    finally:
        db.close()


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", raw)[1])


class AdminServer:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.path = host.home.admin_socket
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await start_private_server(self._client, self.path, limit=MAX_REQUEST_BYTES)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = peer_uid(writer)
            line = await reader.readline()
            try:
                frame = json.loads(line)
                if not isinstance(frame, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                response: dict[str, Any] = {"id": None, "ok": False,
                                            "error": {"code": "bad-request", "message": str(exc)}}  # fmt: skip
            else:
                if uid is not None and uid != os.getuid():
                    response = {"id": frame.get("id"), "ok": False,
                                "error": {"code": "forbidden", "message": "not the owner"}}  # fmt: skip
                else:
                    caller = {"caller": "host", "uid": uid}
                    response = await asyncio.to_thread(
                        dispatch_in_thread, self.host, asyncio.get_running_loop(), frame, caller
                    )
            writer.write((dumps(response) + "\n").encode())
            await writer.drain()
        except Exception:
            logger.exception("admin connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
