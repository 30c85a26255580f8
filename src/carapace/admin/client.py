"""The admin client: argv → request frame, over ``data/ncl.sock`` or directly.

``send_frame`` speaks the socket protocol (one JSON line each way); it raises
``HostUnavailable`` when no host listens (socket absent or connection refused), so the
caller can fall back to ``dispatch`` over a ``direct_context``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from carapace.admin.frames import AdminError
from carapace.errors import CarapaceError

MAX_RESPONSE = 64 * 1024 * 1024


class HostUnavailable(CarapaceError):
    """No host listens on the admin socket."""

    code = "transport-error"


def parse_words(words: list[str]) -> tuple[list[str], dict[str, Any]]:
    """ncl's argv rules: ``--key value`` (value = next token unless it starts with ``--``),
    ``--key=value``, ``--flag`` (true); every other word is positional."""
    positionals: list[str] = []
    args: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--") and len(word) > 2:
            key, eq, value = word[2:].partition("=")
            val: Any = value
            if not eq:
                if i + 1 < len(words) and not words[i + 1].startswith("--"):
                    val = words[i + 1]
                    i += 1
                else:
                    val = True
            if key in args:
                raise AdminError("invalid-args", f"--{key} given twice")
            args[key] = val
        elif word == "-h":
            args["help"] = True
        else:
            positionals.append(word)
        i += 1
    return positionals, args


def send_frame(path: Path, frame: dict[str, Any], *, timeout: float = 120.0) -> dict[str, Any]:
    """Send one request frame to the host and return its response frame."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise HostUnavailable(f"no host listening on {path}: {exc.strerror or exc}")
        except OSError as exc:
            raise AdminError("transport-error", f"cannot connect to {path}: {exc}")
        line = json.dumps(frame, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            sock.sendall(line.encode("utf-8"))
            buf = bytearray()
            while b"\n" not in buf and len(buf) < MAX_RESPONSE:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise AdminError("transport-error", f"connection to the host failed: {exc}")
    finally:
        sock.close()
    text = bytes(buf).split(b"\n", 1)[0]
    try:
        resp = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AdminError("transport-error", "the host sent no valid response frame")
    if not isinstance(resp, dict) or not isinstance(resp.get("ok"), bool):
        raise AdminError("transport-error", "the host sent no valid response frame")
    return resp
