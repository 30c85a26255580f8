"""A fake Telegram Bot API server on loopback, for tests of the real python-telegram-bot.

::

    with FakeTelegram(token="123:abc") as tg:
        bot = Bot("123:abc", base_url=tg.base_url, base_file_url=tg.base_file_url)
        tg.user_message(chat=tg.private_chat(42, "Ann"), user=tg.user(42, "Ann"), text="hi")
        ...
        assert tg.bot_messages(42)[-1].text == "hello"

It implements the subset carapace uses — ``getMe``, ``getUpdates`` (offsets confirm, long
polling), ``sendMessage``, ``editMessageText``, ``setMessageReaction``, ``sendChatAction``,
``sendDocument``/``sendPhoto``, ``getFile`` and file download (``/file/bot<token>/<path>``),
``answerCallbackQuery`` — with Telegram's limits: 4096 characters of text after entity
parsing (1024 for captions), 64 bytes of ``callback_data``, HTML parse mode checked (an
unknown or unbalanced tag is ``400 Bad Request: can't parse entities``), ``message is not
modified`` on an edit that changes nothing. Faults on demand: ``fail(method, 429,
retry_after=N)`` or any code, ``block(chat_id)`` (403 "bot was blocked by the user"),
``revoke()`` (every call 401 Unauthorized). Everything the bot did is recorded (``calls``,
``messages``, ``actions``, ``answers``).

The platform side (the people) is ``user_message``, ``edit_user_message`` and
``press_button``: each queues an update.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any

from carapace.testing.telegram_wire import (
    MAX_CALLBACK_DATA,
    MAX_CAPTION,
    MAX_TEXT,
    ApiError,
    ParseError,
    make_handler,
    parse_html,
    utf16_len,
)


@dataclass
class BotMessage:
    """A message the bot sent, as the chat shows it."""

    chat_id: int
    message_id: int
    text: str  # visible text (entities parsed away); a caption for files
    source: str  # what the bot sent, verbatim
    parse_mode: str | None
    thread_id: int | None = None
    buttons: list[list[dict[str, Any]]] = field(default_factory=list)
    document: tuple[str, bytes] | None = None
    reactions: list[str] = field(default_factory=list)
    edits: int = 0
    date: int = 0


class FakeTelegram:
    def __init__(self, token: str = "123456:TEST-token", *, bot_id: int = 777000,
                 username: str = "carapace_test_bot", host: str = "127.0.0.1",
                 port: int = 0) -> None:  # fmt: skip
        self.token = token
        self.bot_id = bot_id
        self.username = username
        self.lock = threading.Condition()
        self.updates: list[dict[str, Any]] = []
        self.confirmed = 0  # every update_id below this was confirmed by an offset
        self.returned: list[int] = []  # update ids, once per getUpdates answer holding them
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.messages: dict[tuple[int, int], BotMessage] = {}
        self.user_messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.actions: list[tuple[int, str, int | None]] = []
        self.answers: list[dict[str, Any]] = []
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id → (file_path, data)
        self.faults: list[tuple[str, ApiError, int, int | None]] = []
        self.blocked: set[int] = set()
        self.revoked = False
        # called (in the server's thread) right after a getUpdates answer with updates was
        # written: e.g. to kill the bot's process before it can commit them
        self.on_updates_returned: Callable[[list[dict[str, Any]]], None] | None = None
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._file_ids = itertools.count(1)
        self._closed = False
        self.server = ThreadingHTTPServer((host, port), make_handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True,
                                       name="fake-telegram")  # fmt: skip
        self.thread.start()

    # ---------------------------------------------------------------- lifecycle
    @property
    def root_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.root_url}/file/bot"

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeTelegram:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    # ---------------------------------------------------------------- the people
    @staticmethod
    def user(user_id: int, first_name: str, username: str | None = None) -> dict[str, Any]:
        u: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            u["username"] = username
        return u

    @staticmethod
    def private_chat(user_id: int, first_name: str) -> dict[str, Any]:
        return {"id": user_id, "type": "private", "first_name": first_name}

    @staticmethod
    def group_chat(chat_id: int, title: str, *, forum: bool = False) -> dict[str, Any]:
        kind = "supergroup" if forum or str(chat_id).startswith("-100") else "group"
        chat: dict[str, Any] = {"id": chat_id, "type": kind, "title": title}
        if forum:
            chat["is_forum"] = True
        return chat

    def _next_mid(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def _push(self, update: dict[str, Any]) -> int:
        with self.lock:
            update["update_id"] = next(self._update_ids)
            self.updates.append(update)
            self.lock.notify_all()
            return int(update["update_id"])

    def add_file(self, name: str, data: bytes) -> dict[str, Any]:
        """A file on Telegram's servers, for a message's document/photo/voice/audio."""
        n = next(self._file_ids)
        fid = f"file-{n}"
        with self.lock:
            self.files[fid] = (f"documents/{n}_{name}", data)
        return {"file_id": fid, "file_unique_id": f"u{fid}", "file_size": len(data)}

    def user_message(self, chat: dict[str, Any], user: dict[str, Any], text: str | None = None,
                     *, thread: int | None = None, entities: list[dict[str, Any]] | None = None,
                     reply_to: int | None = None, document: tuple[str, bytes] | None = None,
                     photo: bytes | None = None, voice: bytes | None = None,
                     audio: tuple[str, bytes] | None = None) -> dict[str, Any]:  # fmt: skip
        """A person writes in a chat; returns the message (its update is queued)."""
        with self.lock:
            mid = self._next_mid(chat["id"])
        msg: dict[str, Any] = {"message_id": mid, "date": int(time.time()), "chat": chat,
                               "from": user}  # fmt: skip
        key = "caption" if (document or photo or voice or audio) else "text"
        if text is not None:
            msg[key] = text
        if entities:
            msg[f"{key}_entities" if key == "caption" else "entities"] = entities
        if thread is not None:
            msg["message_thread_id"] = thread
            msg["is_topic_message"] = True
        if reply_to is not None:
            replied = self.messages.get((chat["id"], reply_to))
            if replied is not None:
                msg["reply_to_message"] = self._message_json(replied)
            else:
                msg["reply_to_message"] = self.user_messages[(chat["id"], reply_to)]
        if document is not None:
            msg["document"] = {**self.add_file(document[0], document[1]),
                               "file_name": document[0], "mime_type": "application/octet-stream"}  # fmt: skip
        if photo is not None:
            f = self.add_file("photo.jpg", photo)
            msg["photo"] = [{**f, "width": 90, "height": 90}]
        if voice is not None:
            msg["voice"] = {**self.add_file("voice.ogg", voice), "duration": 1,
                            "mime_type": "audio/ogg"}  # fmt: skip
        if audio is not None:
            msg["audio"] = {**self.add_file(audio[0], audio[1]), "duration": 1,
                            "file_name": audio[0], "mime_type": "audio/mpeg"}  # fmt: skip
        self.user_messages[(chat["id"], mid)] = msg
        self._push({"message": msg})
        return msg

    def edit_user_message(self, chat_id: int, message_id: int, text: str) -> dict[str, Any]:
        msg = dict(self.user_messages[(chat_id, message_id)])
        msg["text"] = text
        msg["edit_date"] = int(time.time()) + 1
        self.user_messages[(chat_id, message_id)] = msg
        self._push({"edited_message": msg})
        return msg

    def press_button(self, chat_id: int, message_id: int, index: int,
                     user: dict[str, Any]) -> str:  # fmt: skip
        """A person presses the ``index``-th inline button (row-major) of a bot message."""
        m = self.messages[(chat_id, message_id)]
        buttons = [b for row in m.buttons for b in row]
        data = buttons[index]["callback_data"]
        qid = f"cq-{next(self._update_ids)}"
        self._push({"callback_query": {"id": qid, "from": user, "chat_instance": "ci",
                                       "message": self._message_json(m), "data": data}})  # fmt: skip
        return qid

    # ---------------------------------------------------------------- faults
    def fail(self, method: str, code: int, description: str | None = None, *,
             retry_after: int | None = None, times: int = 1,
             chat_id: int | None = None) -> None:  # fmt: skip
        """The next ``times`` calls of ``method`` (to ``chat_id`` only, if given) fail."""
        desc = description or {429: f"Too Many Requests: retry after {retry_after}",
                               400: "Bad Request", 500: "Internal Server Error"}.get(code, "Error")  # fmt: skip
        with self.lock:
            self.faults.append((method, ApiError(code, desc, retry_after), times, chat_id))

    def block(self, chat_id: int) -> None:
        self.blocked.add(chat_id)

    def revoke(self) -> None:
        with self.lock:
            self.revoked = True
            self.lock.notify_all()

    # ---------------------------------------------------------------- views
    def bot_messages(self, chat_id: int, thread: int | None = None) -> list[BotMessage]:
        with self.lock:
            return sorted((m for m in self.messages.values()
                           if m.chat_id == chat_id and m.thread_id == thread),
                          key=lambda m: m.message_id)  # fmt: skip

    def called(self, method: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for m, p in self.calls if m == method]

    def pending_updates(self) -> int:
        with self.lock:
            return sum(1 for u in self.updates if u["update_id"] >= self.confirmed)

    # ---------------------------------------------------------------- the API
    def _message_json(self, m: BotMessage) -> dict[str, Any]:
        chat = {"id": m.chat_id, "type": "private" if m.chat_id > 0 else "supergroup"}
        out: dict[str, Any] = {"message_id": m.message_id, "date": m.date or int(time.time()),
                               "chat": chat, "from": self.me()}  # fmt: skip
        if m.document is not None:
            out["document"] = {"file_id": f"sent-{m.message_id}", "file_unique_id": "x",
                               "file_name": m.document[0], "file_size": len(m.document[1])}  # fmt: skip
            if m.text:
                out["caption"] = m.text
        else:
            out["text"] = m.text
        if m.thread_id is not None:
            out["message_thread_id"] = m.thread_id
        if m.buttons:
            out["reply_markup"] = {"inline_keyboard": m.buttons}
        if m.edits:
            out["edit_date"] = int(time.time())
        return out

    def me(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Carapace",
                "username": self.username, "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False}  # fmt: skip

    def call(self, method: str, params: dict[str, Any]) -> Any:
        with self.lock:
            self.calls.append((method, params))
            if self.revoked:
                raise ApiError(401, "Unauthorized")
            for i, (m, err, times, chat) in enumerate(self.faults):
                if m == method and (chat is None or str(params.get("chat_id")) == str(chat)):
                    if times <= 1:
                        del self.faults[i]
                    else:
                        self.faults[i] = (m, err, times - 1, chat)
                    raise err
        fn = getattr(self, f"_api_{method}", None)
        if fn is None:
            raise ApiError(404, "Not Found: method not found")
        return fn(params)

    def _chat(self, params: dict[str, Any]) -> int:
        try:
            chat_id = int(params["chat_id"])
        except (KeyError, ValueError):
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat_id

    def _visible(self, text: str, parse_mode: str | None, limit: int, what: str) -> str:
        shown = text
        if parse_mode and parse_mode.upper() == "HTML":
            try:
                shown = parse_html(text)
            except ParseError as exc:
                raise ApiError(400, f"Bad Request: can't parse entities: {exc}")
        elif parse_mode:
            raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode}")
        if not shown.strip() and what == "text":
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(shown) > limit:
            raise ApiError(400, f"Bad Request: message {what} is too long")
        return shown

    def _buttons(self, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
        markup = params.get("reply_markup")
        if not markup:
            return []
        rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
        if not isinstance(rows, list):
            raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
        for row in rows:
            for b in row:
                data = b.get("callback_data")
                if data is not None and len(str(data).encode()) > MAX_CALLBACK_DATA:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return rows

    def _store(self, chat_id: int, params: dict[str, Any], text: str, source: str,
               document: tuple[str, bytes] | None = None) -> dict[str, Any]:  # fmt: skip
        thread = params.get("message_thread_id")
        with self.lock:
            m = BotMessage(chat_id, self._next_mid(chat_id), text, source,
                           params.get("parse_mode"), int(thread) if thread else None,
                           self._buttons(params), document, date=int(time.time()))  # fmt: skip
            self.messages[(chat_id, m.message_id)] = m
        return self._message_json(m)

    def _api_getMe(self, params: dict[str, Any]) -> Any:
        return self.me()

    def _api_getUpdates(self, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        limit = int(params.get("limit") or 100)
        deadline = time.monotonic() + timeout
        with self.lock:
            if offset:
                self.confirmed = max(self.confirmed, offset)
            while True:
                if self.revoked:
                    raise ApiError(401, "Unauthorized")
                ready = [u for u in self.updates if u["update_id"] >= self.confirmed]
                left = deadline - time.monotonic()
                if ready or left <= 0 or self._closed:
                    self.returned.extend(u["update_id"] for u in ready[:limit])
                    return ready[:limit]
                self.lock.wait(left)

    def _api_sendMessage(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat(params)
        text = str(params.get("text") or "")
        shown = self._visible(text, params.get("parse_mode"), MAX_TEXT, "text")
        return self._store(chat_id, params, shown, text)

    def _api_editMessageText(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat(params)
        key = (chat_id, int(params.get("message_id") or 0))
        m = self.messages.get(key)
        if m is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        text = str(params.get("text") or "")
        shown = self._visible(text, params.get("parse_mode"), MAX_TEXT, "text")
        buttons = self._buttons(params)
        if shown == m.text and buttons == m.buttons:
            raise ApiError(400, "Bad Request: message is not modified: specified new message "
                                "content and reply markup are exactly the same")  # fmt: skip
        with self.lock:
            m.text, m.source, m.parse_mode, m.buttons = (
                shown,
                text,
                params.get("parse_mode"),
                buttons,
            )
            m.edits += 1
        return self._message_json(m)

    def _api_setMessageReaction(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat(params)
        key = (chat_id, int(params.get("message_id") or 0))
        target = self.messages.get(key)
        if target is None and key not in self.user_messages:
            raise ApiError(400, "Bad Request: message to react not found")
        reaction = params.get("reaction") or []
        emojis = [r.get("emoji") for r in reaction if isinstance(r, dict)]
        if any(not e or r.get("type") != "emoji" for e, r in zip(emojis, reaction, strict=True)):
            raise ApiError(400, "Bad Request: REACTION_INVALID")
        with self.lock:
            if target is not None:
                target.reactions = [str(e) for e in emojis]
            else:
                self.user_messages[key]["reactions"] = emojis
        return True

    def _api_sendChatAction(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat(params)
        thread = params.get("message_thread_id")
        with self.lock:
            self.actions.append(
                (chat_id, str(params.get("action")), int(thread) if thread else None)
            )
        return True

    def _send_file(self, params: dict[str, Any], field_name: str) -> Any:
        chat_id = self._chat(params)
        upload = params.get(field_name)
        if not isinstance(upload, tuple):
            raise ApiError(400, f"Bad Request: there is no {field_name} in the request")
        caption = str(params.get("caption") or "")
        shown = self._visible(caption, params.get("parse_mode"), MAX_CAPTION, "caption")
        return self._store(chat_id, params, shown, caption, upload)

    def _api_sendDocument(self, params: dict[str, Any]) -> Any:
        return self._send_file(params, "document")

    def _api_sendPhoto(self, params: dict[str, Any]) -> Any:
        return self._send_file(params, "photo")

    def _api_getFile(self, params: dict[str, Any]) -> Any:
        fid = str(params.get("file_id") or "")
        if fid not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        path, data = self.files[fid]
        if len(data) > 20 * 1024 * 1024:
            raise ApiError(400, "Bad Request: file is too big")
        return {"file_id": fid, "file_unique_id": f"u{fid}", "file_size": len(data),
                "file_path": path}  # fmt: skip

    def _api_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        with self.lock:
            self.answers.append(params)
        return True

    def file_data(self, path: str) -> bytes | None:
        with self.lock:
            for p, data in self.files.values():
                if p == path:
                    return data
        return None


__all__ = ["MAX_TEXT", "ApiError", "BotMessage", "FakeTelegram", "parse_html", "utf16_len"]
