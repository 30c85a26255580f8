"""A photo sent on Telegram reaches the model, as a person would see it: a real ``carapace
run`` with the real python-telegram-bot against the fake Bot API, the group on the
``anthropic`` or the ``claude`` (Claude Agent SDK) provider against the fake Anthropic
server through the host's proxy, the key only in the home's secrets file."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_helpers import E2E, wait_for
from test_e2e_telegram import ANN, configure, said

from carapace.testing.fake_llm import FakeLLMServer, FakeReply
from carapace.testing.fake_telegram import FakeTelegram

KEY = "sk-ant-e2e-photo-key-000"


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))  # fmt: skip


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    with FakeTelegram() as fake:
        yield fake


def images_in(request: dict[str, Any]) -> list[bytes]:
    content = request["messages"][-1]["content"]
    return [base64.b64decode(b["source"]["data"]) for b in content
            if isinstance(b, dict) and b.get("type") == "image"]  # fmt: skip


@pytest.mark.parametrize("provider", ["anthropic", "claude"])
def test_a_telegram_photo_reaches_the_model(e2e: E2E, tg: FakeTelegram, provider: str) -> None:
    if provider == "claude":
        pytest.importorskip("claude_agent_sdk", reason="the claude extra is not installed")
    configure(e2e, tg)
    e2e.ok("users", "create", "--id", f"telegram:{ANN}", "--kind", "telegram",
           "--display-name", "Ann")  # fmt: skip
    dm = e2e.ok("messaging-groups", "create", "--channel-type", "telegram", "--platform-id",
                f"telegram:{ANN}", "--name", "Ann", "--unknown-sender-policy", "public")["id"]  # fmt: skip
    e2e.ok("wirings", "create", "--messaging-group-id", dm, "--agent-group-id", "main",
           "--engage-mode", "pattern", "--engage-pattern", ".")  # fmt: skip
    with open(e2e.home / "secrets.env", "a") as f:
        f.write(f"ANTHROPIC_API_KEY={KEY}\n")
    photo = png()
    with FakeLLMServer([FakeReply(text="A single red pixel.")], require_key=KEY) as srv:
        e2e.ok("groups", "config", "update", "--id", "main", "--provider", provider,
               "--settings", json.dumps({"base_url": srv.base_url}))  # fmt: skip
        e2e.start_host()
        ann = tg.user(ANN, "Ann", "ann")
        tg.user_message(tg.private_chat(ANN, "Ann"), ann, "what is in this picture?", photo=photo)
        wait_for(lambda: said(tg, ANN, "A single red pixel."), timeout=120, what="the reply")
        requests = list(srv.requests)
        assert srv.structure_errors == []
    e2e.stop_host()
    assert images_in(requests[0]) == [photo]
    assert "what is in this picture?" in json.dumps(requests[0]["messages"][-1])
