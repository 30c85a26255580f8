"""Who may talk to an agent group, who approves, and where an approver is reached.

Spec/host.md §6.2–6.4. ``can_access`` (owner / global admin / admin of the group / member,
first match wins), ``has_admin_privilege`` (who may decide a card about a group),
``pick_approver`` (scoped admins → global admins → owners, each by grant time,
de-duplicated) and ``pick_approval_delivery`` (the first approver reachable on the
origin's channel kind, else the first reachable at all) over a lazily resolved ``user_dms``
cache. For the local CLI channel the owner ``cli:local`` is reached in the ``cli``/``local``
chat itself (the adapter has no ``open_dm``, so the handle is the platform id).
"""

from __future__ import annotations

import inspect
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from carapace.db import messaging, users
from carapace.db.messaging import MessagingGroup
from carapace.errors import CarapaceError
from carapace.jsonutil import loads_or

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str  # owner | global_admin | scoped_admin | member | unknown_user | not_member


def can_access(db: sqlite3.Connection, user_id: str | None, agent_group_id: str) -> AccessDecision:
    """``canAccessAgentGroup`` (spec §6.2): the first matching rule wins."""
    if user_id is None or users.get_user(db, user_id) is None:
        return AccessDecision(False, "unknown_user")
    if users.has_role(db, user_id, "owner"):
        return AccessDecision(True, "owner")
    if users.has_role(db, user_id, "admin", None, exact=True):
        return AccessDecision(True, "global_admin")
    if users.has_role(db, user_id, "admin", agent_group_id, exact=True):
        return AccessDecision(True, "scoped_admin")
    if users.is_member(db, user_id, agent_group_id):
        return AccessDecision(True, "member")
    return AccessDecision(False, "not_member")


def has_admin_privilege(
    db: sqlite3.Connection, user_id: str | None, agent_group_id: str | None
) -> bool:
    """Owner, global admin, or admin of ``agent_group_id`` (spec §6.2)."""
    if user_id is None:
        return False
    if users.has_role(db, user_id, "owner") or users.has_role(db, user_id, "admin"):
        return True
    return agent_group_id is not None and users.has_role(
        db, user_id, "admin", agent_group_id, exact=True
    )


def pick_approver(db: sqlite3.Connection, agent_group_id: str | None) -> list[str]:
    """Scoped admins of the group, then global admins, then owners (spec §6.3)."""
    out: list[str] = []
    queries: list[tuple[str, tuple[Any, ...]]] = []
    if agent_group_id is not None:
        queries.append(("role='admin' AND agent_group_id=?", (agent_group_id,)))
    queries.append(("role='admin' AND agent_group_id IS NULL", ()))
    queries.append(("role='owner' AND agent_group_id IS NULL", ()))
    for where, args in queries:
        rows = db.execute(
            f"SELECT user_id FROM user_roles WHERE {where} ORDER BY granted_at, user_id", args
        )
        for (uid,) in rows:
            if uid not in out:
                out.append(uid)
    return out


def split_user_id(
    user_id: str, kind: str | None, adapters: Mapping[str, Any]
) -> tuple[str, str] | None:
    """``(channel_type, handle)`` of a user id (spec §6.4 step 2)."""
    if ":" not in user_id:
        return None
    prefix, handle = user_id.split(":", 1)
    if prefix in adapters or kind is None or kind not in adapters:
        return (prefix, handle) if handle else None
    return kind, user_id


async def ensure_user_dm(
    db: sqlite3.Connection,
    adapters: Mapping[str, Any],
    user_id: str,
    *,
    now: datetime | None = None,
) -> MessagingGroup | None:
    """The chat where ``user_id`` is reached privately, resolved once and cached (§6.4)."""
    user = users.get_user(db, user_id)
    if user is None:
        return None
    parsed = split_user_id(user_id, user.kind, adapters)
    if parsed is None:
        return None
    channel_type, handle = parsed
    cached = users.get_user_dm(db, user_id, channel_type)
    if cached is not None:
        mg = messaging.get_messaging_group(db, cached.messaging_group_id)
        if mg is not None:
            return mg
    adapter = adapters.get(channel_type)
    if adapter is None:
        return None
    open_dm = getattr(adapter, "open_dm", None)
    if open_dm is None:
        platform_id = handle
    else:
        try:
            result = open_dm(handle)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # an adapter's failure means "unreachable", nothing more
            logger.warning("open_dm failed for %s: %s", user_id, exc)
            return None
        if not isinstance(result, str) or not result:
            return None
        platform_id = result
    mg = messaging.get_messaging_group_by_platform(db, channel_type, platform_id)
    if mg is None:
        try:
            mg = messaging.create_messaging_group(
                db, channel_type, platform_id, name=user.display_name, is_group=False,
                unknown_sender_policy="strict", now=now,
            )  # fmt: skip
        except CarapaceError:  # created concurrently
            mg = messaging.get_messaging_group_by_platform(db, channel_type, platform_id)
            if mg is None:
                return None
    users.set_user_dm(db, user_id, channel_type, mg.id, now=now)
    return mg


@dataclass(frozen=True)
class ApprovalTarget:
    user_id: str
    messaging_group: MessagingGroup


async def pick_approval_delivery(
    db: sqlite3.Connection,
    adapters: Mapping[str, Any],
    approvers: list[str],
    origin_channel_type: str | None,
    *,
    now: datetime | None = None,
) -> ApprovalTarget | None:
    """The first approver reachable on the origin's channel kind, else any (spec §6.3)."""
    if origin_channel_type:
        for uid in approvers:
            if uid.split(":", 1)[0] == origin_channel_type:
                mg = await ensure_user_dm(db, adapters, uid, now=now)
                if mg is not None:
                    return ApprovalTarget(uid, mg)
    for uid in approvers:
        mg = await ensure_user_dm(db, adapters, uid, now=now)
        if mg is not None:
            return ApprovalTarget(uid, mg)
    return None


def clicker_id(raw_user_id: str, channel_type: str | None) -> str:
    """A click's user id namespaced with the channel it came from (spec §6.5)."""
    if ":" in raw_user_id or not channel_type:
        return raw_user_id
    return users.user_id_for(channel_type, raw_user_id)


def sender_handle(doc: dict[str, Any]) -> tuple[str | None, str | None]:
    """(raw handle, display name) as NanoClaw's sender resolver reads them."""
    author = doc.get("author") if isinstance(doc.get("author"), dict) else {}
    assert isinstance(author, dict)
    handle = next(
        (v for v in (doc.get("senderId"), doc.get("sender"), author.get("userId"))
         if isinstance(v, str) and v),
        None,
    )  # fmt: skip
    name = next(
        (v for v in (doc.get("senderName"), author.get("fullName"), author.get("userName"),
                     doc.get("sender")) if isinstance(v, str) and v),
        None,
    )  # fmt: skip
    return handle, name


def event_sender(channel_type: str, content: str) -> tuple[str | None, str | None]:
    """``(user id, display name)`` of an inbound message, as the router resolves them."""
    return doc_sender(channel_type, loads_or(content, None))


def doc_sender(channel_type: str, doc: object) -> tuple[str | None, str | None]:
    """:func:`event_sender` of a message content already decoded."""
    if not isinstance(doc, dict):
        return None, None
    handle, name = sender_handle(doc)
    if handle is None:
        return None, name
    return (handle if ":" in handle else users.user_id_for(channel_type, handle)), name
