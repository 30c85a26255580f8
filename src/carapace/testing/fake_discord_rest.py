"""The REST routes of the fake Discord (``fake_discord.py``), with Discord's limits."""

from __future__ import annotations

import json
import unicodedata
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

from carapace.testing.fake_discord import (
    MAX_CONTENT,
    MAX_FILES,
    MAX_NONCE,
    MAX_UPLOAD,
    Channel,
    _error,
    _iso,
    json_response,
    snowflake,
)

if TYPE_CHECKING:
    from carapace.testing.fake_discord import FakeDiscord


async def _body(request: web.Request) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """JSON body, or multipart ``payload_json`` + ``files[n]`` as discord.py sends files."""
    if request.content_type.startswith("multipart/"):
        payload: dict[str, Any] = {}
        files: list[tuple[str, bytes]] = []
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):  # nested multipart: not Discord's
                continue
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif part.name and part.name.startswith("files["):
                files.append((part.filename or "file", bytes(await part.read())))
        return payload, files
    text = await request.text()
    return (json.loads(text) if text else {}), []


def _valid_emoji(emoji: str) -> bool:
    if ":" in emoji:  # custom emoji name:id
        return True
    return bool(emoji) and all(
        unicodedata.category(ch) in ("So", "Sk", "Mn", "Cf") or ch in "\u200d\ufe0f"
        or unicodedata.category(ch).startswith("N")  # keycaps
        for ch in emoji
    )  # fmt: skip


async def handle(fake: FakeDiscord, request: web.Request, path: str, route: str) -> web.Response:
    m = request.method
    parts = path.strip("/").split("/")
    if (m, route) == ("GET", "/users/@me"):
        return json_response(fake.bot_user())
    if (m, route) == ("GET", "/oauth2/applications/@me"):
        return json_response({
            "id": fake.application_id, "name": fake.bot.username, "description": "",
            "icon": None, "bot_public": False, "bot_require_code_grant": False,
            "owner": {"id": snowflake(), "username": "owner", "discriminator": "0",
                      "avatar": None},
            "verify_key": "0" * 64, "flags": 0, "summary": "",
        })  # fmt: skip
    if m == "GET" and route in ("/gateway", "/gateway/bot"):
        return json_response({"url": fake.gateway_url, "shards": 1,
                                  "session_start_limit": {"total": 1000, "remaining": 1000,
                                                          "reset_after": 0,
                                                          "max_concurrency": 1}})  # fmt: skip
    if (m, route) == ("POST", "/users/@me/channels"):
        body, _ = await _body(request)
        person = fake.people.get(str(body.get("recipient_id")))
        if person is None:
            return _error(400, 50033, "Invalid Recipient(s)")
        return json_response(fake.channel_payload(fake.dm(person)))
    if parts[0] == "channels":
        channel = fake.channels.get(parts[1])
        if channel is None:
            return _error(404, 10003, "Unknown Channel")
        if channel.unreachable:
            return _error(403, 50001, "Missing Access")
        return await _channel_route(fake, request, channel, parts, route)
    if parts[0] == "interactions" and route.endswith("/callback"):
        return await _interaction_callback(fake, request, parts[1], parts[2])
    if parts[0] == "webhooks" and m == "POST" and len(parts) == 3:
        body, _ = await _body(request)
        fake.followups.append({"token": parts[2], **body})
        return json_response({"id": snowflake(), "channel_id": "0", "content": body.get(
            "content", ""), "author": fake.bot.payload(), "timestamp": _iso(),
            "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": [],
            "mention_roles": [], "attachments": [], "embeds": [], "pinned": False, "type": 0,
            "flags": body.get("flags", 0)})  # fmt: skip
    return _error(404, 0, f"404: Not Found ({m} {route})")


async def _channel_route(fake: FakeDiscord, request: web.Request, channel: Channel,
                         parts: list[str], route: str) -> web.Response:  # fmt: skip
    m = request.method
    if (m, route) == ("GET", "/channels/{id}"):
        return json_response(fake.channel_payload(channel))
    if (m, route) == ("POST", "/channels/{id}/typing"):
        fake.typing.append(channel.id)
        return web.Response(status=204)
    if (m, route) == ("GET", "/channels/{id}/messages"):
        after = int(request.query.get("after", "0"))
        msgs = [x for x in channel.messages if int(x["id"]) > after]
        msgs = msgs[: int(request.query.get("limit", "50"))]  # the oldest after, newest first
        return json_response(list(reversed(msgs)))
    if (m, route) == ("POST", "/channels/{id}/messages"):
        if channel.posts_before_failing is not None:
            if channel.posts_before_failing <= 0:
                channel.unreachable, channel.posts_before_failing = True, None
                return _error(403, 50001, "Missing Access")
            channel.posts_before_failing -= 1
        body, files = await _body(request)
        err = _check_message(fake, body, files, creating=True)
        if err:
            return _error(400, 50035, f"Invalid Form Body: {err}")
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):  # Discord: the same nonce from
            # the same author again (within minutes) returns the message it created
            seen = next((x for x in channel.messages if x.get("nonce") == str(nonce)
                         and x["author"]["id"] == fake.bot.id), None)  # fmt: skip
            if seen is not None:
                fake.nonce_hits += 1
                return json_response(seen)
        made = _store(fake, channel, body, files)
        if nonce is not None:
            made["nonce"] = str(nonce)
        return json_response(made)
    msg: dict[str, Any] | None = next(
        (x for x in channel.messages if len(parts) > 3 and x["id"] == parts[3]), None
    )
    if msg is None:
        return _error(404, 10008, "Unknown Message")
    if (m, route) == ("PATCH", "/channels/{id}/messages/{id}"):
        if msg["author"]["id"] != fake.bot.id:
            return _error(403, 50005, "Cannot edit a message authored by another user")
        body, files = await _body(request)
        err = _check_message(fake, body, files, creating=False)
        if err:
            return _error(400, 50035, f"Invalid Form Body: {err}")
        if "content" in body:
            msg["content"] = body["content"] or ""
        if "components" in body:
            msg["components"] = body["components"] or []
        if "embeds" in body:
            msg["embeds"] = body["embeds"] or []
        msg["edited_timestamp"] = _iso()
        return json_response(msg)
    if m == "PUT" and route == "/channels/{id}/messages/{id}/reactions/{emoji}/@me":
        emoji = unquote(parts[5])
        if not _valid_emoji(emoji):
            return _error(400, 10014, "Unknown Emoji")
        fake.reactions.append((channel.id, msg["id"], emoji))
        return web.Response(status=204)
    return _error(404, 0, f"404: Not Found ({m} {route})")


def _check_message(fake: FakeDiscord, body: dict[str, Any], files: list[tuple[str, bytes]],
                   *, creating: bool) -> str | None:  # fmt: skip
    content = body.get("content") or ""
    if len(content) > MAX_CONTENT:
        return f"content: Must be {MAX_CONTENT} or fewer in length."
    if len(files) > MAX_FILES:
        return f"files: at most {MAX_FILES}"
    if sum(len(d) for _, d in files) > MAX_UPLOAD:
        return "Request entity too large"
    if body.get("components"):
        err = fake.check_components(body["components"])
        if err:
            return f"components: {err}"
    nonce = body.get("nonce")
    if nonce is not None and (not isinstance(nonce, (str, int)) or len(str(nonce)) > MAX_NONCE):
        return f"nonce: Must be {MAX_NONCE} or fewer in length."
    if creating and not (content or files or body.get("embeds") or body.get("components")):
        return "Cannot send an empty message"
    return None


def _store(fake: FakeDiscord, channel: Channel, body: dict[str, Any],
           files: list[tuple[str, bytes]]) -> dict[str, Any]:  # fmt: skip
    attachments = []
    for name, data in files:
        key = snowflake()
        fake._files[key] = data
        attachments.append({"id": key, "filename": name, "size": len(data),
                            "url": f"{fake.base_url}/cdn/{key}/{name}",
                            "proxy_url": f"{fake.base_url}/cdn/{key}/{name}"})  # fmt: skip
    msg = fake.message_payload(channel, fake.bot, body.get("content") or "",
                               attachments=attachments)  # fmt: skip
    msg["components"] = body.get("components") or []
    msg["embeds"] = body.get("embeds") or []
    fake.allowed_mentions.append(body.get("allowed_mentions"))
    ref = body.get("message_reference")
    if isinstance(ref, dict):
        msg["message_reference"] = ref
    channel.messages.append(msg)
    return msg


async def _interaction_callback(fake: FakeDiscord, request: web.Request, iid: str,
                                token: str) -> web.Response:  # fmt: skip
    known = fake._interactions.get(iid)
    if known is None or known["token"] != token:
        return _error(404, 10062, "Unknown interaction")
    if known["responded"]:
        return _error(400, 40060, "Interaction has already been acknowledged.")
    body, _ = await _body(request)
    known["responded"] = True
    fake.interaction_responses.append({"interaction": iid, **body})
    msg = known["message"]
    if body.get("type") == 7:  # UPDATE_MESSAGE: the card is edited in place
        data = body.get("data") or {}
        if "content" in data:
            msg["content"] = data["content"] or ""
        if "components" in data:
            msg["components"] = data["components"] or []
    if request.query.get("with_response") in ("true", "True", "1"):
        return json_response({"interaction": {"id": iid, "type": 3,
                                              "response_message_id": msg["id"]},
                              "resource": {"type": body.get("type")}})  # fmt: skip
    return web.Response(status=204)
