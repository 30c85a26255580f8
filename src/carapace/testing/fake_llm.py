"""Fake model APIs on loopback, so tests can run the real SDKs without a network.

In process::

    with FakeLLMServer([FakeReply(tool_calls=(FakeToolCall("echo", {"x": 1}),)),
                        FakeReply(text="done")], flavour="anthropic") as srv:
        provider = AnthropicProvider(ProviderConfig(base_url=srv.base_url, api_key="k"))
        ...
        assert srv.requests[1]["messages"][-1]["content"][0]["type"] == "tool_result"

One server answers both APIs: ``POST /v1/messages`` (Anthropic Messages) and
``POST /v1/chat/completions`` (OpenAI Chat Completions; ``/chat/completions`` too).
``flavour`` only picks ``base_url``: ``http://127.0.0.1:PORT`` for the anthropic SDK,
``http://127.0.0.1:PORT/v1`` for the openai SDK (both are also available as
``anthropic_base_url`` / ``openai_base_url``).

The script is consumed in order, one item per request. An item is a ``FakeReply``, a
``FakeError``, a string (a text reply), a JSON object (see ``parse_item``) or, in process
only, a callable taking the request body and returning an item. When the script is used
up the server answers ``default`` if given, else HTTP 500 "fake LLM script exhausted".

As a separate process (for runners started as subprocesses)::

    python -m carapace.testing.fake_llm --flavour anthropic --script FILE \\
        --port-file FILE [--log FILE] [--port N] [--host H] [--require-key KEY]

``FakeLLMProcess`` wraps that command for tests.

The script items live in ``llm_script``; each API's answers (replies, usage, streamed
events, error bodies) in ``llm_anthropic`` and ``llm_openai``. This module is the server
both share and re-exports the script's names.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from carapace.testing import llm_anthropic, llm_openai
from carapace.testing.llm_script import (
    FakeError,
    FakeReply,
    FakeToolCall,
    Item,
    RecordedRequest,
    ScriptItem,
    _prepare,
    item_to_json,
    load_script_file,
    parse_item,
)

__all__ = [
    "FLAVOURS",
    "FakeError",
    "FakeLLMProcess",
    "FakeLLMServer",
    "FakeReply",
    "FakeToolCall",
    "Flavour",
    "Item",
    "RecordedRequest",
    "ScriptItem",
    "item_to_json",
    "load_script_file",
    "parse_item",
    "stream_events",
]

logger = logging.getLogger(__name__)

Flavour = Literal["anthropic", "openai"]
FLAVOURS: tuple[Flavour, ...] = ("anthropic", "openai")


class FakeLLMServer:
    """A scripted Anthropic/OpenAI-compatible HTTP server on a free loopback port."""

    def __init__(
        self,
        script: Iterable[ScriptItem] = (),
        *,
        flavour: Flavour = "anthropic",
        default: ScriptItem | None = None,
        require_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | os.PathLike[str] | None = None,
        check_structure: bool = True,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; use one of {', '.join(FLAVOURS)}")
        self.flavour: Flavour = flavour
        self._script = [_prepare(i) for i in script]
        self._default = _prepare(default) if default is not None else None
        self.require_key = require_key
        # the APIs' message-structure rules (llm_*.check_messages): violations answer 400
        self.check_structure = check_structure
        self.structure_errors: list[str] = []
        self.recorded: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ids = 0
        self._log: IO[str] | None = (
            open(log_path, "a", encoding="utf-8") if log_path is not None else None  # noqa: SIM115
        )
        self._httpd = _HTTPServer((host, port), _make_handler(self))
        self._thread: threading.Thread | None = None

    # -- addresses and records -------------------------------------------------
    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def anthropic_base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def base_url(self) -> str:
        return self.anthropic_base_url if self.flavour == "anthropic" else self.openai_base_url

    @property
    def requests(self) -> list[Any]:
        """The parsed JSON bodies of every request received, in order."""
        with self._lock:
            return [r.body for r in self.recorded]

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def add(self, *items: ScriptItem) -> None:
        """Append items to the script."""
        prepared = [_prepare(i) for i in items]
        with self._lock:
            self._script.extend(prepared)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-llm-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` (the CLI's mode)."""
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- request handling (called from handler threads) -----------------------
    def _record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.recorded.append(RecordedRequest(path=path, headers=headers, body=body))
            if self._log is not None:
                self._log.write(json.dumps({"path": path, "body": body}) + "\n")
                self._log.flush()

    def _next(self, body: dict[str, Any]) -> Item:
        with self._lock:
            entry = self._script.pop(0) if self._script else self._default
        if entry is None:
            return FakeError(status=500, message="fake LLM script exhausted")
        if callable(entry):
            return parse_item(entry(body))
        return entry

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.require_key is None:
            return True
        return RecordedRequest("", headers, None).api_key == self.require_key

    def _respond(
        self, api: Flavour, headers: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(body, dict):
            return 400, _error_body(api, 400, "request body must be a JSON object"), {}
        if not self._authorised(headers):
            return 401, _error_body(api, 401, "invalid x-api-key"), {}
        checker = llm_anthropic.check_messages if api == "anthropic" else llm_openai.check_messages
        problem = checker(body) if self.check_structure else None
        if problem is not None:
            self.structure_errors.append(problem)
            return 400, _error_body(api, 400, problem), {}
        item = self._next(body)
        if item.delay_s > 0:
            self._stopping.wait(item.delay_s)
        if isinstance(item, FakeError):
            payload = (
                item.body if item.body is not None else _error_body(api, item.status, item.message)
            )
            return item.status, payload, item.headers
        model = str(body.get("model", "fake-model"))
        if api == "anthropic":
            reply = llm_anthropic.reply(item, model, self._next_id)
        else:
            reply = llm_openai.reply(item, model, self._next_id)
        if body.get("stream") is True:
            opts = body.get("stream_options")
            want = isinstance(opts, dict) and opts.get("include_usage") is True
            events = stream_events(api, reply, want)
            return 200, _Stream(events, item.event_delay_s, item.hold, item.hold_after), {}
        return 200, reply, {}


def stream_events(api: Flavour, reply: dict[str, Any], want_usage: bool) -> list[str]:
    """A non-streamed reply (as ``_respond`` builds it) as server-sent events."""
    if api == "anthropic":
        return llm_anthropic.events(reply)
    return llm_openai.events(reply, want_usage)


def _error_body(api: Flavour, status: int, message: str) -> dict[str, Any]:
    if api == "anthropic":
        return llm_anthropic.error_body(status, message)
    return llm_openai.error_body(status, message)


@dataclass(frozen=True)
class _Stream:
    events: list[str]
    delay_s: float
    hold: threading.Event | None = None
    hold_after: int = 0


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping in a delay must not block stop()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return  # the client gave up (timeout test): nothing to report
        logger.exception("fake LLM server: error handling a request from %s", client_address)


_ROUTES: dict[str, Flavour] = {
    "/v1/messages": "anthropic",
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
}


def _make_handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, chunked streams
        wbufsize = 1 << 16  # head and body in one write (no Nagle/delayed-ACK stall)

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            api = _ROUTES.get(path)
            if api is None:
                self._send(404, {"error": {"message": f"no route {path}"}}, {})
                return
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            server._record(path, headers, body)
            status, payload, extra = server._respond(api, headers, body)
            self._send(status, payload, extra)

        def _send(self, status: int, payload: Any, extra: dict[str, str]) -> None:
            if isinstance(payload, _Stream):
                self._stream(payload)
                return
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, stream: _Stream) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n, event in enumerate(stream.events):
                if n and stream.delay_s > 0:
                    server._stopping.wait(stream.delay_s)
                if stream.hold is not None and n == stream.hold_after:
                    stream.hold.wait(60)
                data = event.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# -- as a separate process -----------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m carapace.testing.fake_llm", description="A scripted fake LLM API."
    )
    parser.add_argument("--flavour", choices=FLAVOURS, default="anthropic")
    parser.add_argument("--script", help="JSON script file (default: empty script)")
    parser.add_argument("--port-file", help="write the chosen port here once listening")
    parser.add_argument("--log", help="append every request as a JSON line here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--require-key", help="answer 401 unless this key is sent")
    args = parser.parse_args(argv)
    items, default = load_script_file(args.script) if args.script else ([], None)
    server = FakeLLMServer(
        items,
        flavour=args.flavour,
        default=default,
        require_key=args.require_key,
        host=args.host,
        port=args.port,
        log_path=args.log,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if args.port_file:
        tmp = Path(f"{args.port_file}.tmp")
        tmp.write_text(f"{server.port}\n", encoding="utf-8")
        os.replace(tmp, args.port_file)
    print(f"fake LLM ({args.flavour}) listening on {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


class FakeLLMProcess:
    """Runs ``python -m carapace.testing.fake_llm`` in a subprocess for a ``with`` block.

    Its files go in ``workdir`` (script, port file, request log, stderr); ``requests()``
    reads the request log. Script items must be JSON-able (no callables).
    """

    def __init__(
        self,
        script: Iterable[ScriptItem],
        *,
        workdir: str | os.PathLike[str],
        flavour: Flavour = "anthropic",
        default: ScriptItem | None = None,
        require_key: str | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.flavour: Flavour = flavour
        self.workdir = Path(workdir)
        self.script_path = self.workdir / "fake-llm-script.json"
        self.port_file = self.workdir / "fake-llm.port"
        self.log_path = self.workdir / "fake-llm-requests.jsonl"
        self.stderr_path = self.workdir / "fake-llm.stderr"
        doc: dict[str, Any] = {"responses": [item_to_json(i) for i in script]}
        if default is not None:
            doc["default"] = item_to_json(default)
        self._doc = doc
        self.require_key = require_key
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        root = f"http://127.0.0.1:{self.port}"
        return root if self.flavour == "anthropic" else f"{root}/v1"

    def __enter__(self) -> FakeLLMProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.script_path.write_text(json.dumps(self._doc), encoding="utf-8")
        self.port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "carapace.testing.fake_llm",
            "--flavour",
            self.flavour,
            "--script",
            str(self.script_path),
            "--port-file",
            str(self.port_file),
            "--log",
            str(self.log_path),
        ]
        if self.require_key:
            cmd += ["--require-key", self.require_key]
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.port_file.exists():
            if self.process.poll() is not None:
                err = self.stderr_path.read_text(encoding="utf-8", errors="replace").strip()
                self.process = None
                raise RuntimeError(f"fake LLM server exited at startup: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake LLM server did not start in time")
            time.sleep(0.01)
        self.port = int(self.port_file.read_text(encoding="utf-8"))
        return self

    def requests(self) -> list[Any]:
        """The JSON bodies received so far."""
        return [line["body"] for line in self.recorded()]

    def recorded(self) -> list[dict[str, Any]]:
        """The log lines so far: ``{"path": ..., "body": ...}``."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    raise SystemExit(main())
