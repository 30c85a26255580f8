"""The default per-session sweep hook: NanoClaw's recurrence (spec §5.6).

After an occurrence of a recurring row is ``completed`` (or ``failed``: a failed run does
not end the series, DESIGN §4), insert the next occurrence and clear ``recurrence`` on the
finished row, in one transaction. The next time is computed from the current time in the
host's time zone, as NanoClaw does; the scheduling module replaces this hook with its
catch-up policies (``Host.hooks.on_sweep_session``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from carapace.db.connection import transaction
from carapace.db.session import insert_message_in, peek_max_seq
from carapace.host.sweep import SweepContext
from carapace.timefmt import iso, new_id, sqlite_ts

logger = logging.getLogger(__name__)


def default_recurrence(ctx: SweepContext) -> datetime | None:
    from carapace.sched.cron import parse_cron

    inb = ctx.inbound
    rows = inb.execute(
        "SELECT * FROM messages_in WHERE status IN ('completed', 'failed') "
        "AND recurrence IS NOT NULL"
    ).fetchall()
    soonest: datetime | None = None
    for r in rows:
        try:
            nxt = parse_cron(r["recurrence"]).next_after(ctx.timezone, ctx.now)
        except Exception as exc:
            logger.warning("bad recurrence %r on %s: %s", r["recurrence"], r["id"], exc)
            continue
        prefix = "task" if r["kind"] == "task" else "msg"
        with transaction(inb):
            insert_message_in(
                inb,
                {
                    "id": new_id(prefix, ctx.now), "kind": r["kind"],
                    "timestamp": sqlite_ts(ctx.now), "process_after": iso(nxt),
                    "recurrence": r["recurrence"], "series_id": r["series_id"] or r["id"],
                    "platform_id": r["platform_id"], "channel_type": r["channel_type"],
                    "thread_id": r["thread_id"], "content": r["content"],
                },
                other_max=peek_max_seq(ctx.paths.outbound, "messages_out"),
            )  # fmt: skip
            inb.execute("UPDATE messages_in SET recurrence=NULL WHERE id=?", (r["id"],))
        logger.info("session %s: next occurrence of %s at %s", ctx.session.id, r["id"], iso(nxt))
        soonest = nxt if soonest is None or nxt < soonest else soonest
    return soonest
