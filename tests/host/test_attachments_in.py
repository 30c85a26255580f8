"""Inbound attachments (spec §3.8): base64 ``data`` is written to ``inbox/<message id>/`` and
replaced by its path. Most messages have none: their content is not decoded at all (a
plain substring test), yet a key written with JSON escapes is still found."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carapace.config import Home
from carapace.db import groups
from carapace.db.central import open_central
from carapace.host import attachments_in as attachments_mod
from carapace.host.sessions import SessionManager

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def mgr(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    db = open_central(home.central_db)
    ag = groups.create_agent_group(db, "agent", "agent").id
    m = SessionManager(home, db)
    m.test_session = m.resolve(ag, None, None, "agent-shared", now=NOW)[0]  # type: ignore[attr-defined]
    yield m
    m.writers.close()
    db.close()


def _extract(mgr: SessionManager, content: str) -> str:
    paths = mgr.paths(mgr.test_session)  # type: ignore[attr-defined]
    return mgr.extract_attachments(paths, "m1", content, NOW)


def test_an_attachment_is_written_to_the_inbox(mgr: SessionManager) -> None:
    data = b"\x89PNG fake image"
    content = json.dumps({"text": "see", "attachments": [
        {"name": "pic.png", "data": base64.b64encode(data).decode()}]})  # fmt: skip
    out = json.loads(_extract(mgr, content))
    [att] = out["attachments"]
    assert att == {"name": "pic.png", "localPath": "inbox/m1/pic.png"}
    root = mgr.paths(mgr.test_session).root  # type: ignore[attr-defined]
    assert (root / "inbox" / "m1" / "pic.png").read_bytes() == data


def test_an_escaped_key_is_still_found(mgr: SessionManager) -> None:
    data = b"hello"
    content = ('{"text": "x", "\\u0061ttachments": [{"name": "a.txt", "data": "'
               + base64.b64encode(data).decode() + '"}]}')  # fmt: skip
    assert "attachments" not in content  # only the escaped spelling
    out = json.loads(_extract(mgr, content))
    assert out["attachments"] == [{"name": "a.txt", "localPath": "inbox/m1/a.txt"}]
    root = mgr.paths(mgr.test_session).root  # type: ignore[attr-defined]
    assert (root / "inbox" / "m1" / "a.txt").read_bytes() == data


def test_a_message_without_attachments_is_not_decoded(
    mgr: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real = attachments_mod.loads_or

    def counting(text: str, default: object) -> object:
        decoded.append(text)
        return real(text, default)

    monkeypatch.setattr(attachments_mod, "loads_or", counting)
    plain = json.dumps({"text": "just words", "sender": "ann"})
    assert _extract(mgr, plain) is plain
    assert decoded == []
    accented = json.dumps({"text": "café"})  # ensure_ascii: a backslash escape
    assert _extract(mgr, accented) == accented
    assert decoded == [accented]  # a backslash could hide the key: decoded
