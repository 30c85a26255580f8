"""Token counts out of responses as they pass: JSON bodies and server-sent event streams.

Anthropic: ``usage`` in the message (``input_tokens``, ``output_tokens``,
``cache_read_input_tokens``, ``cache_creation_input_tokens``); when streaming, the
``message_start`` event carries the input side and ``message_delta`` the output count.
OpenAI: ``usage`` (``prompt_tokens``, ``completion_tokens``,
``prompt_tokens_details.cached_tokens``); when streaming, the final chunk carries it (the
proxy asks for it with ``stream_options.include_usage``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_JSON_BODY = 8 * 1024 * 1024  # bigger non-streamed bodies are forwarded, not metered


@dataclass
class Counts:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0
    model: str | None = None
    seen: bool = False


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Meter:
    """Feed it the response bytes; read ``counts`` at the end."""

    def __init__(self, provider: str, streaming: bool) -> None:
        self.provider = provider
        self.streaming = streaming
        self.counts = Counts()
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> None:
        if self._overflow:
            return
        self._buf += data
        if not self.streaming:
            if len(self._buf) > MAX_JSON_BODY:
                self._overflow = True
                self._buf.clear()
            return
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_JSON_BODY:
                    self._overflow = True
                    self._buf.clear()
                return
            line = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def finish(self) -> Counts:
        if not self.streaming and self._buf and not self._overflow:
            try:
                doc = json.loads(bytes(self._buf))
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                self._usage(doc)
        self._buf.clear()
        return self.counts

    def _event(self, payload: bytes) -> None:
        if not payload or payload == b"[DONE]":
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        if self.provider == "anthropic":
            kind = doc.get("type")
            if kind == "message_start" and isinstance(doc.get("message"), dict):
                self._usage(doc["message"])
            elif kind == "message_delta" and isinstance(doc.get("usage"), dict):
                usage = doc["usage"]
                self.counts.seen = True
                if "output_tokens" in usage:
                    self.counts.output_tokens = _int(usage["output_tokens"])
                for key, attr in (
                    ("input_tokens", "input_tokens"),
                    ("cache_read_input_tokens", "cache_read"),
                    ("cache_creation_input_tokens", "cache_write"),
                ):
                    if _int(usage.get(key)):
                        setattr(self.counts, attr, _int(usage[key]))
        else:
            self._usage(doc)

    def _usage(self, doc: dict[str, Any]) -> None:
        if isinstance(doc.get("model"), str):
            self.counts.model = doc["model"]
        usage = doc.get("usage")
        if not isinstance(usage, dict):
            return
        c = self.counts
        c.seen = True
        if self.provider == "anthropic":
            c.input_tokens = _int(usage.get("input_tokens"))
            c.output_tokens = _int(usage.get("output_tokens"))
            c.cache_read = _int(usage.get("cache_read_input_tokens"))
            c.cache_write = _int(usage.get("cache_creation_input_tokens"))
        else:
            c.input_tokens = _int(usage.get("prompt_tokens"))
            c.output_tokens = _int(usage.get("completion_tokens"))
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                c.cache_read = _int(details.get("cached_tokens"))
