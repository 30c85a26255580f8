"""Helpers for the admin tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import socket
import threading
from typing import Any

from carapace.admin.direct import DirectContext, direct_context
from carapace.admin.dispatch import HOST_CALLER, dispatch, handle_line
from carapace.config import Home


def call(
    ctx: DirectContext, command: str, /, caller: dict[str, Any] | None = None, **args: Any
) -> Any:
    """Dispatch and return the data; fail the test on an error frame."""
    resp = dispatch(ctx, {"id": "t1", "command": command, "args": args}, caller or HOST_CALLER)
    assert resp["ok"], resp
    assert resp["id"] == "t1"
    return resp["data"]


def call_err(
    ctx: DirectContext, command: str, /, caller: dict[str, Any] | None = None, **args: Any
) -> tuple[str, str]:
    resp = dispatch(ctx, {"id": "t2", "command": command, "args": args}, caller or HOST_CALLER)
    assert not resp["ok"], resp
    return resp["error"]["code"], resp["error"]["message"]


def dump(ctx: DirectContext) -> str:
    return "\n".join(ctx.db.iterdump())


class StandInHost:
    """A tiny admin socket server over the home, standing in for `carapace run`."""

    def __init__(self, home: Home) -> None:
        self.ctx = direct_context(home)
        self.path = home.admin_socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(8)
        self.requests = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                self.requests += 1
                conn.sendall(handle_line(self.ctx, buf.split(b"\n", 1)[0], HOST_CALLER))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)
        self.path.unlink(missing_ok=True)
        self.ctx.close()
