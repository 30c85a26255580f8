"""``POST /hooks/<name>``: signature, replay window, replay of a signature, size limit,
the ``webhook`` row committed before 202, replies fetched or posted to a callback."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from web_rig import HOOK_SECRET, WebRig, wait_for

from carapace.channels.base import OutboundMessage
from carapace.errors import ConfigError, DeliveryError
from carapace.web.hooks import sign


def _post(rig: WebRig, body: bytes, *, ts: int | None = None, secret: str = HOOK_SECRET,
          hook: str = "ci", event: str = "push") -> Any:  # fmt: skip
    t = str(ts if ts is not None else int(time.time()))
    return rig.client().post(f"/hooks/{hook}", content=body, headers={
        "x-carapace-timestamp": t, "x-carapace-signature": sign(secret, t, body),
        "x-carapace-event": event})  # fmt: skip


def _webhook_rows(rig: WebRig) -> list[dict[str, Any]]:
    out = []
    for db in (rig.home.data_dir / "v2-sessions").glob("*/*/inbound.db"):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            out += [json.loads(r[0]) for r in conn.execute(
                "SELECT content FROM messages_in WHERE kind='webhook'")]  # fmt: skip
        finally:
            conn.close()
    return out


def test_signed_post_is_stored_as_webhook_kind_before_202(rig: WebRig) -> None:
    r = _post(rig, b'{"ref": "main", "ok": true}')
    assert r.status_code == 202, r.text
    assert r.json()["routed"]
    rows = _webhook_rows(rig)  # committed when 202 came back: no waiting
    assert rows == [{"source": "ci", "event": "push", "payload": {"ref": "main", "ok": True}}]


def test_bad_signature_old_timestamp_replay_and_size_are_refused(rig: WebRig) -> None:
    assert _post(rig, b"{}", secret="wrong").status_code == 401
    assert _post(rig, b"{}", ts=int(time.time()) - 3600).status_code == 401
    assert _post(rig, b"{}", ts=int(time.time()) + 3600).status_code == 401
    c = rig.client()
    assert c.post("/hooks/ci", content=b"{}").status_code == 401  # unsigned
    assert _post(rig, b"x" * 4096).status_code == 413
    assert _post(rig, b"{}", hook="nope").status_code == 404
    t = str(int(time.time()))
    headers = {"x-carapace-timestamp": t, "x-carapace-signature": sign(HOOK_SECRET, t, b'{"n":1}')}
    assert c.post("/hooks/ci", content=b'{"n":1}', headers=headers).status_code == 202
    assert c.post("/hooks/ci", content=b'{"n":1}', headers=headers).status_code == 409
    assert len(_webhook_rows(rig)) == 1  # nothing else was stored


def test_replies_are_fetched_with_a_signed_get(rig: WebRig) -> None:
    assert _post(rig, b'{"build": 7}').status_code == 202

    def replies() -> list[Any]:
        t = str(int(time.time()))
        r = rig.client().get("/hooks/ci/replies?after=0", headers={
            "x-carapace-timestamp": t, "x-carapace-signature": sign(HOOK_SECRET, t, b"")})  # fmt: skip
        assert r.status_code == 200
        return list(r.json()["replies"])

    got = wait_for(replies, what="the agent's reply")
    assert "build" in json.dumps(got[0]["content"])
    assert rig.client().get("/hooks/ci/replies").status_code == 401


class _Callback(BaseHTTPRequestHandler):
    got: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_callback_gets_signed_replies_and_failures_raise(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cb"
    rig = WebRig(tmp_path, hooks=f'[web.hooks.ci]\nagent = "main"\ncallback_url = "{url}"\n')
    try:
        assert _post(rig, b'{"door": "open"}').status_code == 202
        headers, body = wait_for(lambda: _Callback.got and _Callback.got[0], what="callback")
        assert headers["x-carapace-signature"] == sign(
            HOOK_SECRET, headers["x-carapace-timestamp"], body
        )
        assert json.loads(body)["hook"] == "ci"
        _Callback.status = (
            500  # a failure is a DeliveryError: the host retries, then tells the agent
        )
        ch = rig.host.adapters["webhook"]
        with pytest.raises(DeliveryError):
            rig.call(ch.deliver("ci", None, OutboundMessage("chat", {"text": "x"}, (), "m1")))
    finally:
        rig.close()
        server.shutdown()


def test_web_settings_are_checked(tmp_path: Path) -> None:
    from carapace.config import Home
    from carapace.web.config import web_settings

    home = Home(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    cases = {
        '[web]\nenabled = true\nhost = "0.0.0.0"\n': "not a loopback address",
        '[web]\nenabled = "yes"\n': "must be true or false",
        "[web]\nport = 70000\n": "port must be a whole number",
        '[web]\ntls_cert = "/x"\n': "given together",
        "[web]\nbogus = 1\n": "unknown key 'bogus'",
        '[web.hooks."Bad Name"]\n': "hook name",
        '[web.hooks.ci]\ncallback_url = "ftp://x"\n': r"http\(s\) URL",
    }
    for text, message in cases.items():
        home.config_file.write_text(text)
        with pytest.raises(ConfigError, match=message):
            web_settings(home.load_settings(), home)
    home.config_file.write_text('[web]\nenabled = true\nhost = "0.0.0.0"\nbehind_proxy = true\n')
    assert web_settings(home.load_settings(), home).secure_cookies
    home.config_file.write_text("")
    assert not web_settings(home.load_settings(), home).enabled
