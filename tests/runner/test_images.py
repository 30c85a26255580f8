"""Images a person sends (saved by the host under the session's ``inbox/``) reach models
that take them as image blocks, are described in text for those that do not, and are
capped; the fake model servers check the blocks' shape as the APIs do."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from carapace.db.session import SessionPaths
from carapace.runner import images as images_mod
from carapace.runner.images import collect_images
from carapace.runner.inbound import InRow
from carapace.testing import llm_anthropic, llm_openai
from carapace.testing.fake_llm import FakeLLMServer, FakeReply
from carapace.testing.runner_proc import run_once
from carapace.testing.sessions import (
    channel_dest,
    make_agent_dir,
    make_session,
    read_outbound,
    write_chat,
)


def png(width: int = 1, height: int = 1) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)  # fmt: skip

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))  # fmt: skip


JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60 + b"\xff\xd9"


def put(session: SessionPaths, message_id: str, name: str, data: bytes) -> dict[str, Any]:
    folder = session.inbox / message_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return {"type": "image", "name": name, "localPath": f"inbox/{message_id}/{name}"}


def row(attachments: list[dict[str, Any]], kind: str = "chat") -> InRow:
    data = {"text": "look", "attachments": attachments}
    return InRow(id="m1", seq=2, kind=kind, timestamp="2026-12-05T00:00:00Z", status="pending",
                 process_after=None, recurrence=None, series_id=None, trigger=1,
                 platform_id="chat-1", channel_type="telegram", thread_id=None,
                 content=json.dumps(data))  # fmt: skip


@pytest.fixture
def session(tmp_path: Path) -> SessionPaths:
    return make_session(tmp_path, destinations=[channel_dest("family", "telegram", "chat-1")],
                        routing=("telegram", "chat-1", None))  # fmt: skip


def test_images_are_judged_by_their_bytes_and_capped(
    session: SessionPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images_mod, "MAX_IMAGE_BYTES", 1000)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    (session.inbox / "m1").mkdir(parents=True)
    (session.inbox / "m1" / "link.png").symlink_to(secret)
    atts = [
        {**put(session, "m1", "upload.bin", png()), "type": "file"},  # a web upload: no type
        put(session, "m1", "photo.jpg", JPEG),
        put(session, "m1", "fake.png", b"<svg>not a png</svg>"),
        put(session, "m1", "huge.png", png() + b"\x00" * 2000),
        {"type": "image", "name": "link.png", "localPath": "inbox/m1/link.png"},
        {"type": "image", "name": "up", "localPath": "../secret.png"},
        {**put(session, "m1", "notes.txt", b"plain text"), "type": "file"},
    ]
    got = collect_images([row(atts)], session.root)
    assert [(i.name, i.media_type) for i in got.images] == [
        ("upload.bin", "image/png"), ("photo.jpg", "image/jpeg")]  # fmt: skip
    assert base64.b64decode(got.images[0].data) == png()
    assert [s.split(":")[0] for s in got.skipped] == ["fake.png", "huge.png", "link.png"]
    assert "not a JPEG, PNG, GIF or WebP" in got.skipped[0] and "limit" in got.skipped[1]
    monkeypatch.setattr(images_mod, "MAX_IMAGES", 1)
    got = collect_images([row(atts[:2])], session.root)
    assert len(got.images) == 1 and "more than 1 images" in got.skipped[0]
    assert collect_images([row(atts, kind="task")], session.root).images == []


def test_fake_servers_check_image_blocks() -> None:
    good = base64.b64encode(png()).decode()

    def ant(block: dict[str, Any], role: str = "user") -> str | None:
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
        msgs.append({"role": "user", "content": [{"type": "text", "text": "x"}, block]})
        if role == "assistant":
            msgs = [msgs[0], {"role": "assistant", "content": [block]}]
        return llm_anthropic.check_messages({"messages": msgs})

    src = {"type": "base64", "media_type": "image/png", "data": good}
    assert ant({"type": "image", "source": src}) is None
    assert "media_type" in str(ant({"type": "image", "source": {**src, "media_type": "image/svg"}}))
    assert "not image/jpeg" in str(
        ant({"type": "image", "source": {**src, "media_type": "image/jpeg"}})
    )
    assert "base64" in str(ant({"type": "image", "source": {**src, "data": "!!"}}))
    assert "Field required" in str(ant({"type": "image", "data": good}))
    assert "only allowed in user" in str(ant({"type": "image", "source": src}, "assistant"))

    def oai(url: object) -> str | None:
        part = {"type": "image_url", "image_url": {"url": url}}
        msgs = [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]
        return llm_openai.check_messages({"messages": msgs})

    assert oai(f"data:image/png;base64,{good}") is None
    assert "not image/gif" in str(oai(f"data:image/gif;base64,{good}"))
    assert "expected" in str(oai(f"data:image/png,{good}"))
    assert "Field required" in str(oai(None))


def sent_images(request: dict[str, Any]) -> list[str]:
    """The media types of the images in a request's last user message (either API)."""
    content = request["messages"][-1]["content"]
    out = []
    for block in content if isinstance(content, list) else []:
        if block.get("type") == "image":
            out.append(block["source"]["media_type"])
        elif block.get("type") == "image_url":
            out.append(block["image_url"]["url"].split(";")[0].removeprefix("data:"))
    return out


@pytest.mark.parametrize("flavour", ["anthropic", "openai", "claude"])
def test_a_photo_reaches_the_model_once(
    flavour: str, session: SessionPaths, tmp_path: Path
) -> None:
    if flavour == "claude":
        pytest.importorskip("claude_agent_sdk", reason="the claude extra is not installed")
    api = "anthropic" if flavour == "claude" else flavour
    agent_dir = make_agent_dir(tmp_path, config={"provider": flavour})
    att = put(session, "m1", "cat.png", png(2, 2))
    script = [FakeReply(text="A red square."), FakeReply(text="Still red.")]
    with FakeLLMServer(script, flavour=api) as srv:  # type: ignore[arg-type]
        env = {f"{api.upper()}_BASE_URL": srv.base_url, f"{api.upper()}_API_KEY": "test-key"}
        write_chat(session, "what is this?", id="m1", extra={"attachments": [att]})
        first = run_once(session, agent_dir, timeout=120, **env)
        assert first.returncode == 0, first.stderr
        write_chat(session, "sure?", id="m2")
        second = run_once(session, agent_dir, timeout=120, **env)  # a restarted runner continues
        assert second.returncode == 0, second.stderr
        requests = list(srv.requests)
        assert srv.structure_errors == []
    assert [r["content"]["text"] for r in read_outbound(session)] == ["A red square.", "Still red."]
    assert sent_images(requests[0]) == ["image/png"]
    data = base64.b64encode(png(2, 2)).decode()
    if flavour != "claude":  # Claude Code keeps its own transcript (with the image) and resumes it
        assert data not in json.dumps(requests[1])  # sent with its turn only, not stored
        assert data not in (session.outbound.read_bytes()).decode("latin-1")


def test_a_model_without_images_is_told_what_was_not_shown(
    session: SessionPaths, tmp_path: Path
) -> None:
    script = [{"match": "", "reply": "saw: {user_text}"}]
    agent_dir = make_agent_dir(tmp_path, config={"provider": "mock"}, mock_script=script)
    att = put(session, "m1", "cat.png", png())
    write_chat(session, "look", id="m1", extra={"attachments": [att]})
    result = run_once(session, agent_dir, timeout=120)
    assert result.returncode == 0, result.stderr
    transcript = (session.root / "conversations" / f"{session.root.name}.jsonl").read_text()
    assert "not shown: this model takes no images. cat.png (image/png" in transcript


def test_a_photo_sent_through_the_host_reaches_the_model(tmp_path: Path) -> None:
    """The whole path: an inbound message with a base64 photo (as the Telegram adapter hands
    it over), saved by the host under inbox/, read by the runner, sent as an image block
    through the host's proxy."""
    from carapace.bootstrap import CLI_CHANNEL, CLI_PLATFORM_ID, init_home
    from carapace.channels.base import InboundEvent, InboundMessage
    from carapace.config import Home, Settings
    from carapace.db import groups
    from carapace.host.host import Host, HostOptions
    from carapace.jsonutil import dumps
    from carapace.testing.recorder import Recorder
    from carapace.timefmt import iso, new_id

    home = Home(tmp_path / "home")
    init_home(home)
    channel = Recorder()
    photo = png(3, 3)
    content = dumps({"text": "what is this?", "sender": "test", "senderId": "cli:local",
                     "attachments": [{"type": "image", "mimeType": "image/png",
                                      "data": base64.b64encode(photo).decode()}]})  # fmt: skip
    event = InboundEvent(CLI_CHANNEL, CLI_PLATFORM_ID, None,
                         InboundMessage(new_id("cli"), "chat", content, iso()))  # fmt: skip
    with FakeLLMServer([FakeReply(text="A small red square.")]) as srv:
        host = Host(home, settings=Settings(runner_idle_exit_s=60.0), channels=[channel],
                    options=HostOptions(sockets=False))  # fmt: skip
        [g] = groups.list_agent_groups(host.db)
        groups.update_container_config(host.db, g.id, {
            "provider": "anthropic", "settings": {"base_url": srv.base_url}})  # fmt: skip

        async def go() -> str:
            await host.start()
            try:
                await host.route(event)
                reply = await asyncio.wait_for(channel.got.get(), 120)
                doc = (
                    reply.content if isinstance(reply.content, dict) else json.loads(reply.content)
                )
                return str(doc["text"])
            finally:
                await host.stop()
                host.close()

        text = asyncio.run(go())
        requests = list(srv.requests)
        assert srv.structure_errors == []
    assert text == "A small red square."
    assert sent_images(requests[0]) == ["image/png"]
    [block] = [b for b in requests[0]["messages"][-1]["content"] if b["type"] == "image"]
    assert base64.b64decode(block["source"]["data"]) == photo


def test_images_off_for_a_text_only_model(session: SessionPaths, tmp_path: Path) -> None:
    agent_dir = make_agent_dir(tmp_path, config={"provider": "openai",
                                                 "settings": {"images": False}})  # fmt: skip
    att = put(session, "m1", "cat.png", png())
    with FakeLLMServer([FakeReply(text="ok")], flavour="openai") as srv:
        write_chat(session, "look", id="m1", extra={"attachments": [att]})
        run = run_once(
            session, agent_dir, timeout=120, OPENAI_BASE_URL=srv.base_url, OPENAI_API_KEY="k"
        )
        assert run.returncode == 0, run.stderr
        requests = list(srv.requests)
    assert sent_images(requests[0]) == []
    text = json.dumps(requests[0]["messages"][-1])
    assert "not shown: images are off for this group. cat.png (image/png" in text
