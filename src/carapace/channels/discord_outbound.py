"""The sending half of the Discord adapter (``discord.py`` in this package): messages split
at 2000 characters with Markdown mapped, files (10 per message), cards as buttons, edits,
reactions, typing, DMs. Mentions never ping anyone. discord.py honours Discord's per-route
rate limits (it waits out a 429's ``retry_after`` and follows the bucket headers); a refusal
(403, 404, 400) is a permanent delivery failure, which the host tells the agent; other
failures are retried."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
from discord.http import Route, handle_message_parameters

from carapace.channels import discord_format as fmt
from carapace.channels.base import OutboundMessage, off_loop_if_long
from carapace.errors import CarapaceError, DeliveryError

FILES_PER_MESSAGE = 10
PARTIAL_MAX = 1000  # messages whose posted pieces are remembered for a retry
BUTTONS_PER_ROW, MAX_ROWS, LABEL_CHARS = 5, 5, 80
EMOJI = {
    "thumbsup": "👍", "+1": "👍", "thumbs_up": "👍", "thumbsdown": "👎", "-1": "👎",
    "heart": "❤️", "eyes": "👀", "white_check_mark": "✅", "check": "✅", "x": "❌",
    "tada": "🎉", "fire": "🔥", "rocket": "🚀", "smile": "😄", "laughing": "😆",
    "thinking": "🤔", "wave": "👋", "pray": "🙏", "ok_hand": "👌", "warning": "⚠️",
}  # fmt: skip


@dataclass(frozen=True)
class Nonces:
    """Discord nonces for the pieces of one outbound row: the row's key (32 hex digits, the
    same on every attempt and after a restart) cut to fit Discord's 25 characters, and the
    piece's index."""

    key: str | None

    def of(self, index: int) -> str | None:
        if not self.key:
            return None
        return f"{self.key[:20]}-{index}"[:25]


class DiscordOutbound:
    """Mixed into ``DiscordChannel``: everything it sends."""

    client: discord.Client | None
    failure: str | None
    _partial: dict[str, list[str]]  # message key → ids of its pieces already posted

    def _http(self) -> discord.http.HTTPClient:
        if self.client is None or self.client.is_closed() or self.failure:
            raise DeliveryError(
                f"discord is not connected{': ' + self.failure if self.failure else ''}"
            )
        return self.client.http

    async def _call(self, coro: Any) -> Any:
        """Run one REST call; Discord's refusals become permanent delivery errors."""
        try:
            return await coro
        except (discord.Forbidden, discord.NotFound) as exc:
            raise DeliveryError(
                f"discord refused: {exc.status} {exc.text}", permanent=True
            ) from None
        except discord.HTTPException as exc:
            permanent = 400 <= exc.status < 500 and exc.status != 429
            raise DeliveryError(f"discord: {exc.status} {exc.text}", permanent=permanent) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"discord unreachable: {type(exc).__name__}: {exc}") from None

    async def _post(
        self,
        channel: int,
        payload: dict[str, Any],
        files: Sequence[tuple[str, bytes]] = (),
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """One message. ``nonce`` (with ``enforce_nonce``): Discord answers a post whose
        nonce it saw from the bot minutes before with the message that one made, so a
        re-send after a host crash shows nothing twice."""
        http = self._http()
        payload.setdefault("allowed_mentions", {"parse": []})
        if nonce is not None:
            payload["nonce"], payload["enforce_nonce"] = nonce, True
        if files:
            params = handle_message_parameters(
                content=payload.get("content") or None,
                files=[discord.File(io.BytesIO(d), filename=n) for n, d in files],
                allowed_mentions=discord.AllowedMentions.none(),
                nonce=nonce,
            )
            result: dict[str, Any] = await self._call(http.send_message(channel, params=params))
            return result
        route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel)
        result = await self._call(http.request(route, json=payload))
        return result

    async def deliver(
        self, platform_id: str, thread_id: str | None, message: OutboundMessage
    ) -> str | None:
        try:
            channel = fmt.target_channel(platform_id, thread_id)
        except fmt.BadDiscordId as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        content = (
            message.content if isinstance(message.content, dict) else {"text": str(message.content)}
        )
        files = [(f.name, f.data) for f in message.files]
        nonces = Nonces(message.key)
        if content.get("type") == "ask_question":
            return await self._card(channel, content, nonces)
        if content.get("type") == "card":
            return await self._display_card(channel, content, nonces)
        text = content.get("markdown") or content.get("text") or ""
        if not isinstance(text, str):
            text = str(text)
        chunks = await off_loop_if_long(text, _chunks) if text.strip() else []
        if not chunks and not files:
            return None
        batches = [
            files[i : i + FILES_PER_MESSAGE] for i in range(0, len(files), FILES_PER_MESSAGE)
        ]
        posts: list[tuple[dict[str, Any], list[tuple[str, bytes]]]] = []
        for i, chunk in enumerate(chunks or [""]):
            batch = batches.pop(0) if i == 0 and batches else []
            posts.append(({"content": chunk} if chunk else {}, batch))
        posts += [({}, batch) for batch in batches]
        # the pieces of this message already posted: a retry after a failure part-way posts
        # only the rest (no piece twice while this process lives)
        key = f"{platform_id}/{message.message_out_id}" if message.message_out_id else None
        done = self._partial.pop(key, []) if key else []
        try:
            for i, (payload, batch) in enumerate(posts):
                if i < len(done):
                    continue
                sent = await self._post(channel, payload, batch, nonces.of(i))
                done.append(str(sent["id"]))
        except DeliveryError:
            if key and done:
                self._partial[key] = done
                while len(self._partial) > PARTIAL_MAX:
                    del self._partial[next(iter(self._partial))]
            raise
        return done[0] if done else None

    async def _card(self, channel: int, content: dict[str, Any], nonces: Nonces) -> str | None:
        qid = str(content.get("questionId", ""))
        raw = content.get("options")
        options: list[Any] = raw if isinstance(raw, list) else []
        title = str(content.get("title") or "❓ Question")
        question = str(content.get("question") or "")
        body = fmt.to_discord(f"**{title}**\n\n{question}".strip())
        custom = [f"ncq:{qid}:{i}" for i in range(len(options))]
        if len(options) > BUTTONS_PER_ROW * MAX_ROWS or any(len(c) > 100 for c in custom):
            text = str(content.get("text") or body)  # too many to show: the text form
            return await self.deliver_text(channel, text, nonces)
        buttons = []
        for i, opt in enumerate(options):
            label = opt.get("label") if isinstance(opt, dict) else opt
            label = str(label or f"Option {i + 1}")
            if len(label) > LABEL_CHARS:
                label = label[: LABEL_CHARS - 1] + "…"
            buttons.append(
                {"type": 2, "style": 1 if i == 0 else 2, "label": label, "custom_id": custom[i]}
            )
        rows = [{"type": 1, "components": buttons[i : i + BUTTONS_PER_ROW]}
                for i in range(0, len(buttons), BUTTONS_PER_ROW)]  # fmt: skip
        chunks = fmt.split(body)
        for i, chunk in enumerate(chunks[:-1]):
            await self._post(channel, {"content": chunk}, nonce=nonces.of(i))
        sent = await self._post(
            channel, {"content": chunks[-1] if chunks else title, "components": rows},
            nonce=nonces.of(max(0, len(chunks) - 1)),
        )  # fmt: skip
        return str(sent["id"])

    async def deliver_text(
        self, channel: int, text: str, nonces: Nonces | None = None
    ) -> str | None:
        first: str | None = None
        for i, chunk in enumerate(await off_loop_if_long(text, _chunks)):
            sent = await self._post(channel, {"content": chunk},
                                    nonce=nonces.of(i) if nonces else None)  # fmt: skip
            first = first or str(sent["id"])
        return first

    async def _display_card(
        self, channel: int, content: dict[str, Any], nonces: Nonces
    ) -> str | None:
        raw = content.get("card")
        card: dict[str, Any] = raw if isinstance(raw, dict) else {}
        lines = [f"**{card['title']}**"] if card.get("title") else []
        if card.get("description"):
            lines.append(str(card["description"]))
        for child in card.get("children") or []:
            lines.append(str(child.get("text", "")) if isinstance(child, dict) else str(child))
        links = [a for a in card.get("actions") or []
                 if isinstance(a, dict) and str(a.get("url", "")).startswith(("https://", "http://"))]  # fmt: skip
        text = "\n".join(lines) or str(content.get("fallbackText") or "")
        if not text and not links:
            return None
        payload: dict[str, Any] = {"content": fmt.split(fmt.to_discord(text))[0] if text else "​"}
        if links:
            buttons = [{"type": 2, "style": 5, "label": str(a.get("label") or a["url"])[:LABEL_CHARS],
                        "url": str(a["url"])} for a in links[: BUTTONS_PER_ROW * MAX_ROWS]]  # fmt: skip
            payload["components"] = [{"type": 1, "components": buttons[i : i + BUTTONS_PER_ROW]}
                                     for i in range(0, len(buttons), BUTTONS_PER_ROW)]  # fmt: skip
        sent = await self._post(channel, payload, nonce=nonces.of(0))
        return str(sent["id"])

    async def edit(
        self, platform_id: str, thread_id: str | None, message_id: str, text: str
    ) -> None:
        """Edit one of the bot's messages (a decided card loses its buttons)."""
        try:
            channel = fmt.target_channel(platform_id, thread_id)
            mid = fmt.platform_message_id(message_id)
        except fmt.BadDiscordId as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        body = await off_loop_if_long(text, _chunks) or ["​"]
        content = body[0] if len(body) == 1 else body[0][: fmt.MAX_CHARS - 1] + "…"
        route = Route("PATCH", "/channels/{channel_id}/messages/{message_id}",
                      channel_id=channel, message_id=mid)  # fmt: skip
        await self._call(self._http().request(route, json={"content": content, "components": []}))

    async def react(
        self, platform_id: str, thread_id: str | None, message_id: str, emoji: str
    ) -> None:
        try:
            channel = fmt.target_channel(platform_id, thread_id)
            mid = fmt.platform_message_id(message_id)
        except fmt.BadDiscordId as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        name = emoji.strip().strip(":")
        await self._call(self._http().add_reaction(channel, mid, EMOJI.get(name, name)))

    async def set_typing(self, platform_id: str, thread_id: str | None) -> None:
        with contextlib.suppress(CarapaceError, ValueError):
            channel = fmt.target_channel(platform_id, thread_id)
            await self._call(self._http().send_typing(channel))

    async def open_dm(self, handle: str) -> str:
        """The DM channel with a person (``discord:@me:<channel>``), for approval cards."""
        user = handle.split(":")[-1]
        if not user.isdigit():
            raise DeliveryError(f"not a Discord user id: {handle!r}", permanent=True)
        data = await self._call(self._http().start_private_message(int(user)))
        return fmt.channel_id(None, str(data["id"]))


def _chunks(text: str) -> list[str]:
    return fmt.split(fmt.to_discord(text))
