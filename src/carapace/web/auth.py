"""Login links, the session cookie and CSRF (``carapace web login-link``).

* A login link carries a one-time token (15 minutes; stored hashed). Opening it shows a
  "Sign in" button; pressing it uses the token up and sets the session cookie
  (``HttpOnly; SameSite=Strict; Path=/``, ``Secure`` under TLS or behind a proxy). A link
  preview that only GETs the page does not use it up.
* Every state-changing request (anything but GET/HEAD) must carry the session's CSRF token
  (``X-CSRF-Token`` header or a ``csrf`` form field), and its ``Origin``, when sent, must be
  this server.
* The web user is the ``users`` row ``web:<name>``: roles, memberships and approvals apply
  to it as to any channel's user.
"""

from __future__ import annotations

import hmac
import sqlite3
from datetime import datetime
from urllib.parse import urlsplit

from carapace.config import Home
from carapace.db import users
from carapace.db.connection import connect, transaction
from carapace.errors import ValidationError
from carapace.web.channel import check_user_name
from carapace.web.config import web_settings
from carapace.web.store import WebStore

COOKIE = "carapace_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLES = ("owner", "admin", "none")


def user_id(name: str) -> str:
    return f"web:{check_user_name(name)}"


def ensure_web_user(db: sqlite3.Connection, name: str, role: str, now: datetime) -> str:
    """The ``users`` row ``web:<name>`` (created when missing), and ``role`` granted
    globally unless ``none`` (an existing grant is kept)."""
    if role not in ROLES:
        raise ValidationError(f"bad role {role!r}: one of {', '.join(ROLES)}")
    uid = user_id(name)
    with transaction(db):
        if users.get_user(db, uid) is None:
            users.upsert_user(db, uid, "web", name, now=now)
        if role != "none" and not users.has_role(db, uid, role, None, exact=True):
            users.grant_role(db, uid, role, None, now=now)
    return uid


def make_login_link(home: Home, name: str, role: str, now: datetime) -> str:
    """Create the user (if needed) and a one-time link; returns the URL to open."""
    from carapace.bootstrap import open_home

    ws = web_settings(home.load_settings(), home)
    db, _ = open_home(home)
    try:
        uid = ensure_web_user(db, name, role, now)
    finally:
        db.close()
    store = WebStore.open(home)
    try:
        token = store.create_login_link(uid, now)
    finally:
        store.close()
    return f"{ws.base_url()}/login?token={token}"


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())


def origin_ok(origin: str | None, host_header: str | None, public_url: str | None = None) -> bool:
    """A cross-site ``Origin`` is refused; a missing one is left to the CSRF token. The
    request's own host counts as this server, and so does ``public_url``'s (a reverse proxy
    may rewrite ``Host``)."""
    if not origin:
        return True
    if origin == "null":
        return False
    netloc = urlsplit(origin).netloc
    if public_url and netloc == urlsplit(public_url).netloc:
        return True
    return bool(host_header) and netloc == host_header


def cookie_header(sid: str, *, secure: bool, max_age: int) -> str:
    parts = [f"{COOKIE}={sid}", "HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def open_readonly_central(home: Home) -> sqlite3.Connection:
    return connect(home.central_db, "central", readonly=True)
