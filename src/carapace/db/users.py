"""Identities and who may do what: ``users``, ``user_roles``, ``agent_group_members``, ``user_dms``.

Invariants kept here (spec/host.md §6.2, §11.1 item 13):
* ``owner`` is only ever global (``agent_group_id`` NULL);
* an ``admin`` scoped to a group is also a member of it;
* a global role is held at most once per user (also enforced by a unique index).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import TypeGuard

from carapace.db.central import from_row, from_rows
from carapace.db.connection import transaction
from carapace.errors import InvariantError, NotFoundError, ValidationError
from carapace.timefmt import iso

ROLES = ("owner", "admin")


@dataclass(frozen=True)
class User:
    id: str
    kind: str
    display_name: str | None
    created_at: str


@dataclass(frozen=True)
class Role:
    user_id: str
    role: str
    agent_group_id: str | None
    granted_by: str | None
    granted_at: str


@dataclass(frozen=True)
class Member:
    user_id: str
    agent_group_id: str
    added_by: str | None
    added_at: str


@dataclass(frozen=True)
class UserDm:
    user_id: str
    channel_type: str
    messaging_group_id: str
    resolved_at: str


def user_id_for(channel_type: str, handle: str) -> str:
    """Namespaced user id ``<channel>:<handle>`` (``telegram:123``, ``cli:local``)."""
    return handle if handle.startswith(f"{channel_type}:") else f"{channel_type}:{handle}"


def is_current(known: User | None, display_name: str | None) -> TypeGuard[User]:
    """Whether :func:`upsert_user` would write nothing for this row (it exists, and the
    display name given is none or the same)."""
    return known is not None and (display_name is None or display_name == known.display_name)


def upsert_user(
    db: sqlite3.Connection,
    id: str,
    kind: str,
    display_name: str | None = None,
    *,
    now: datetime | None = None,
) -> User:
    """Create the user or refresh a changed display name."""
    if ":" not in id:
        raise ValidationError(f"user id {id!r} must be namespaced as '<channel>:<handle>'")
    known = get_user(db, id)
    if is_current(known, display_name):
        return known  # nothing changes: no write (the router calls this per message)
    with transaction(db):
        db.execute(
            "INSERT INTO users (id, kind, display_name, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET display_name = COALESCE(excluded.display_name, "
            "users.display_name)",
            (id, kind, display_name, iso(now)),
        )
    user = get_user(db, id)
    assert user is not None
    return user


def get_user(db: sqlite3.Connection, id: str) -> User | None:
    return from_row(User, db.execute("SELECT * FROM users WHERE id=?", (id,)).fetchone())


def list_users(db: sqlite3.Connection) -> list[User]:
    return from_rows(User, db.execute("SELECT * FROM users ORDER BY created_at, id").fetchall())


def delete_user(db: sqlite3.Connection, id: str) -> None:
    if get_user(db, id) is None:
        raise NotFoundError(f"no user {id!r}")
    with transaction(db):
        db.execute("DELETE FROM user_roles WHERE user_id=?", (id,))
        db.execute("UPDATE user_roles SET granted_by=NULL WHERE granted_by=?", (id,))
        db.execute("DELETE FROM agent_group_members WHERE user_id=?", (id,))
        db.execute("UPDATE agent_group_members SET added_by=NULL WHERE added_by=?", (id,))
        db.execute("DELETE FROM user_dms WHERE user_id=?", (id,))
        db.execute("DELETE FROM users WHERE id=?", (id,))


def _require_user(db: sqlite3.Connection, id: str) -> None:
    if get_user(db, id) is None:
        raise NotFoundError(f"no user {id!r}")


def _require_group(db: sqlite3.Connection, id: str) -> None:
    if db.execute("SELECT 1 FROM agent_groups WHERE id=?", (id,)).fetchone() is None:
        raise NotFoundError(f"no agent group {id!r}")


def grant_role(
    db: sqlite3.Connection,
    user_id: str,
    role: str,
    agent_group_id: str | None = None,
    *,
    granted_by: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Grant a role; returns False when the user already had it. Keeps the invariants."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    if role == "owner" and agent_group_id is not None:
        raise InvariantError("the owner role is global; it cannot be scoped to an agent group")
    _require_user(db, user_id)
    if agent_group_id is not None:
        _require_group(db, agent_group_id)
    with transaction(db):
        if has_role(db, user_id, role, agent_group_id, exact=True):
            return False
        db.execute(
            "INSERT INTO user_roles (user_id, role, agent_group_id, granted_by, granted_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (user_id, role, agent_group_id, granted_by, iso(now)),
        )
        if role == "admin" and agent_group_id is not None:
            add_member(db, user_id, agent_group_id, added_by=granted_by, now=now)
    return True


def revoke_role(
    db: sqlite3.Connection, user_id: str, role: str, agent_group_id: str | None = None
) -> bool:
    with transaction(db):
        if agent_group_id is None:
            cur = db.execute(
                "DELETE FROM user_roles WHERE user_id=? AND role=? AND agent_group_id IS NULL",
                (user_id, role),
            )
        else:
            cur = db.execute(
                "DELETE FROM user_roles WHERE user_id=? AND role=? AND agent_group_id=?",
                (user_id, role, agent_group_id),
            )
    return cur.rowcount > 0


def has_role(
    db: sqlite3.Connection,
    user_id: str,
    role: str,
    agent_group_id: str | None = None,
    *,
    exact: bool = False,
) -> bool:
    """Whether the user holds ``role`` (globally, or — unless ``exact`` — scoped to the group)."""
    if agent_group_id is None or exact:
        op = "IS" if agent_group_id is None else "="
        row = db.execute(
            f"SELECT 1 FROM user_roles WHERE user_id=? AND role=? AND agent_group_id {op} ?",
            (user_id, role, agent_group_id),
        ).fetchone()
        return row is not None
    row = db.execute(
        "SELECT 1 FROM user_roles WHERE user_id=? AND role=? "
        "AND (agent_group_id IS NULL OR agent_group_id=?)",
        (user_id, role, agent_group_id),
    ).fetchone()
    return row is not None


def list_roles(
    db: sqlite3.Connection, *, user_id: str | None = None, agent_group_id: str | None = None
) -> list[Role]:
    sql, args = "SELECT * FROM user_roles WHERE 1=1", []
    if user_id is not None:
        sql += " AND user_id=?"
        args.append(user_id)
    if agent_group_id is not None:
        sql += " AND agent_group_id=?"
        args.append(agent_group_id)
    return from_rows(Role, db.execute(sql + " ORDER BY granted_at, user_id", args).fetchall())


def owners(db: sqlite3.Connection) -> list[str]:
    rows = db.execute(
        "SELECT user_id FROM user_roles WHERE role='owner' AND agent_group_id IS NULL "
        "ORDER BY granted_at, user_id"
    )
    return [r[0] for r in rows]


def add_member(
    db: sqlite3.Connection,
    user_id: str,
    agent_group_id: str,
    *,
    added_by: str | None = None,
    now: datetime | None = None,
) -> bool:
    _require_user(db, user_id)
    _require_group(db, agent_group_id)
    with transaction(db):
        cur = db.execute(
            "INSERT OR IGNORE INTO agent_group_members (user_id, agent_group_id, added_by, "
            "added_at) VALUES (?, ?, ?, ?)",
            (user_id, agent_group_id, added_by, iso(now)),
        )
    return cur.rowcount > 0


def remove_member(db: sqlite3.Connection, user_id: str, agent_group_id: str) -> bool:
    """Remove a membership; refused while the user is a scoped admin of the group."""
    if has_role(db, user_id, "admin", agent_group_id, exact=True):
        raise InvariantError(
            f"{user_id} is an admin of {agent_group_id}; revoke the admin role first"
        )
    with transaction(db):
        cur = db.execute(
            "DELETE FROM agent_group_members WHERE user_id=? AND agent_group_id=?",
            (user_id, agent_group_id),
        )
    return cur.rowcount > 0


def is_member(db: sqlite3.Connection, user_id: str, agent_group_id: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM agent_group_members WHERE user_id=? AND agent_group_id=?",
        (user_id, agent_group_id),
    ).fetchone()
    return row is not None


def list_members(db: sqlite3.Connection, agent_group_id: str | None = None) -> list[Member]:
    if agent_group_id is None:
        rows = db.execute("SELECT * FROM agent_group_members ORDER BY added_at, user_id")
    else:
        rows = db.execute(
            "SELECT * FROM agent_group_members WHERE agent_group_id=? ORDER BY added_at, user_id",
            (agent_group_id,),
        )
    return from_rows(Member, rows.fetchall())


def set_user_dm(
    db: sqlite3.Connection,
    user_id: str,
    channel_type: str,
    messaging_group_id: str,
    *,
    now: datetime | None = None,
) -> None:
    with transaction(db):
        db.execute(
            "INSERT INTO user_dms (user_id, channel_type, messaging_group_id, resolved_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(user_id, channel_type) DO UPDATE SET "
            "messaging_group_id=excluded.messaging_group_id, resolved_at=excluded.resolved_at",
            (user_id, channel_type, messaging_group_id, iso(now)),
        )


def get_user_dm(db: sqlite3.Connection, user_id: str, channel_type: str) -> UserDm | None:
    row = db.execute(
        "SELECT * FROM user_dms WHERE user_id=? AND channel_type=?", (user_id, channel_type)
    ).fetchone()
    return from_row(UserDm, row)


def list_user_dms(db: sqlite3.Connection, user_id: str | None = None) -> list[UserDm]:
    if user_id is None:
        rows = db.execute("SELECT * FROM user_dms ORDER BY user_id, channel_type")
    else:
        rows = db.execute(
            "SELECT * FROM user_dms WHERE user_id=? ORDER BY channel_type", (user_id,)
        )
    return from_rows(UserDm, rows.fetchall())


def delete_user_dm(db: sqlite3.Connection, user_id: str, channel_type: str) -> bool:
    with transaction(db):
        cur = db.execute(
            "DELETE FROM user_dms WHERE user_id=? AND channel_type=?", (user_id, channel_type)
        )
    return cur.rowcount > 0
