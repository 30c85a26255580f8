"""Delivering the agent's final text for a turn (spec §5.4, adapted).

* Plain text (outside ``<message to="…">`` blocks, with ``<internal>`` removed) goes to the
  conversation the turn answers: the triggering row's routing, else ``session_routing``,
  else the only destination. NanoClaw required every reply to be wrapped and dropped bare
  text (after a "nudge"); carapace does not.
* A host/system note (spec §2.10: agent channel, the agent's own group or sender
  ``system``) is nobody's message: plain text answering it goes to ``session_routing`` (the
  user's chat, where NanoClaw's ``send_message`` would send it), never back to the agent
  itself; without a session chat it is dropped with a log line.
* ``<message to="name">body</message>`` blocks are routed as NanoClaw does: the named
  destination, the thread and id of the newest inbound row from it (else no thread and the
  batch's id). ``<internal>`` inside a block is removed too (W-18). A block naming no
  destination is not sent; a ``system`` row (action ``unknown_destination``) asks the host
  to tell the agent, with the names it has (not when the turn answers a host note). For an *agent* destination, ``in_reply_to`` is that agent's row
  only when it is part of this batch (else the batch's id): the host counts agent-to-agent
  hops along ``in_reply_to``, so a new conversation must not continue an old chain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

from carapace.log import get_logger
from carapace.runner.formatter import strip_internal_tags
from carapace.runner.inbound import Destination, Inbound, Routing
from carapace.runner.outbound import Outbound
from carapace.runner.tools.base import Batch
from carapace.timefmt import new_id

logger = get_logger(__name__)

MESSAGE_BLOCK_RE = re.compile(r'<message\s+to="([^"]+)"\s*>([\s\S]*?)</message>')


def reply_routing(batch: Batch, inbound: Inbound) -> Routing:
    """Where a plain reply goes (see the module docstring); empty when nowhere."""
    if inbound.answers_note(batch.origin, batch.in_reply_to):
        session = inbound.session_routing()
        if session.channel_type == "agent" and session.platform_id == inbound.agent_group_id:
            return Routing()
        return session
    if not batch.origin.empty:
        return batch.origin
    session = inbound.session_routing()
    if not session.empty:
        return session
    dests = inbound.destinations()
    if len(dests) == 1:
        return dests[0].routing()
    return Routing()


def send_text(
    text: str,
    routing: Routing,
    outbound: Outbound,
    *,
    in_reply_to: str | None,
    now: datetime,
    answers: list[str] | None = None,
    id: str | None = None,
) -> int:
    """One chat row. ``answers``: the batch's inbound ids when the row answers the batch's own
    conversation (``content["answers"]``, read by the host: every sender in it is answered)."""
    content: dict[str, object] = {"text": text}
    if answers:
        content["answers"] = answers
    return outbound.write(
        id=id or new_id("msg"),
        kind="chat",
        content=content,
        once=id is not None,
        platform_id=routing.platform_id,
        channel_type=routing.channel_type,
        thread_id=routing.thread_id,
        in_reply_to=in_reply_to,
        now=now,
    )


def dispatch_final_text(
    text: str,
    batch: Batch,
    inbound: Inbound,
    outbound: Outbound,
    now: Callable[[], datetime],
    *,
    reply_id: str | None = None,
    plain_ids: list[str] | None = None,
) -> list[int]:
    """Write the rows for the agent's final text; returns their seqs. ``reply_id``: the id
    of the plain reply row (a previewed turn's, ``Batch.reply_id``); the plain reply's id
    is appended to ``plain_ids`` when one is written."""
    seqs: list[int] = []
    plain_parts: list[str] = []
    last = 0
    dests: dict[str, Destination] | None = None  # read at the first block (most have none)
    for match in MESSAGE_BLOCK_RE.finditer(text):
        if dests is None:
            dests = {d.name: d for d in inbound.destinations()}
        plain_parts.append(text[last : match.start()])
        last = match.end()
        name, body = match.group(1), strip_internal_tags(match.group(2))
        dest = dests.get(name)
        if dest is None:
            logger.warning('Unknown destination in <message to="%s">, dropping block', name)
            if not inbound.answers_note(batch.origin, batch.in_reply_to):  # no note ping-pong
                seqs.append(outbound.write(
                    id=new_id("sys"), kind="system",
                    content={"action": "unknown_destination", "to": name,
                             "known": sorted(dests)},
                    now=now(),
                ))  # fmt: skip
            continue
        if not body:
            continue
        target = dest.routing()
        latest = (
            inbound.latest_from(target.channel_type, target.platform_id)
            if target.channel_type and target.platform_id
            else None
        )
        if latest is not None and target.channel_type == "agent" and latest.id not in batch.ids:
            latest = None  # not answering that agent in this turn: no chain to continue
        thread = latest.thread_id if latest is not None else None
        routing = Routing(target.channel_type, target.platform_id, thread)
        seqs.append(
            send_text(
                body,
                routing,
                outbound,
                in_reply_to=latest.id if latest is not None else batch.in_reply_to,
                now=now(),
                answers=batch.answers() if routing.same_chat(batch.origin) else None,
            )
        )
    plain_parts.append(text[last:])
    plain = strip_internal_tags("".join(plain_parts))
    if plain:
        routing = reply_routing(batch, inbound)
        if routing.empty and inbound.answers_note(batch.origin, batch.in_reply_to):
            logger.info(
                "reply to host note %s dropped: the session has no chat: %s",
                batch.in_reply_to, plain[:200],
            )  # fmt: skip
        elif routing.empty:
            logger.warning("no conversation to reply to; dropping reply: %s", plain[:200])
        else:
            answers = batch.answers() if routing.same_chat(batch.origin) else None
            seqs.append(
                send_text(plain, routing, outbound, in_reply_to=batch.in_reply_to, now=now(),
                          answers=answers, id=reply_id)
            )  # fmt: skip
            if plain_ids is not None:
                plain_ids.append(reply_id or "")
    return seqs
