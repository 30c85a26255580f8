"""``user-dms``: the DM chat the host uses to reach each user per channel (read-only)."""

from __future__ import annotations

from typing import Any

from carapace.admin.context import AdminContext
from carapace.admin.registry import Opt, Resource, Verb
from carapace.admin.resources.common import LIMIT, rows
from carapace.db import users


def _list(ctx: AdminContext, args: dict[str, Any]) -> Any:
    return rows(users.list_user_dms(ctx.db, args.get("user")), args)


RESOURCE = Resource(
    name="user-dms",
    singular="user DM",
    help="Direct-message chats resolved per user and channel (read-only).",
    verbs=(
        Verb(
            "list",
            _list,
            "List resolved DM chats.",
            options=(Opt("user", "Only this user."), LIMIT),
            kind="list",
        ),
    ),
)
