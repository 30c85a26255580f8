"""The mock provider: deterministic replies, scriptable for tests and demos.

Without a script it answers every user message with one turn that quotes the message
and says no model is configured.

A script is a JSON list of rules, read from ``<agent_dir>/mock-script.json`` (on every
call, so it can be edited while a session runs) or given directly as
``ProviderConfig.extra["script"]`` (which wins over the file)::

    [
      {"match": "(?i)weather",                      # re.search on the last user text
       "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
       "reply": "It is {tool_result}"},             # shortcut for two steps
      {"match": "count",
       "steps": [{"tool_calls": [{"name": "a", "arguments": {}}]},
                 {"reply": "thinking", "tool_calls": [{"name": "b", "arguments": {}}]},
                 {"reply": "done: {tool_result}"}]},
      {"match": "explode", "error": "model exploded"},
      {"reply": "fallback for everything else"}     # no "match": matches every message
    ]

Selection: the first rule whose ``match`` regex ``re.search``-es the last user text
(see ``last_user_text``). Unmatched messages get the default reply.

An exchange starts at the last ``user`` message; the n-th call of the exchange (n = the
number of assistant messages after that user message) returns step n of the rule.
``tool_calls`` and/or ``reply`` on the rule itself are a shortcut: step 1 makes the
calls (if any), step 2 (or step 1 when there are no calls) gives the reply. Once the steps
run out the mock ends the exchange with an empty turn (no text, no calls), so a runner
loop always terminates.

A step is an object with any of ``reply`` (text), ``tool_calls`` (list of
``{"name": str, "arguments": object, "id": str (optional)}``) and ``error`` (text: the
call raises ``ProviderError`` with it). ``error`` on the rule is a one-step shortcut.

Streaming (a runner that shows replies as they are written, ``runner/preview.py``): a
step's ``pieces`` (a list of strings, instead of ``reply``) is its reply written in those
pieces; with ``pause_file`` (a plain file name) the mock waits, before piece ``n`` (from
2), until ``<agent_dir>/<pause_file>.<n>`` exists (at most ``PAUSE_MAX_S``), so a test
can see each piece arrive without timing anything. Without streaming, ``pieces`` is just
the joined reply.

Substitutions in ``reply`` and in string values of tool-call ``arguments``:
``{tool_result}`` is the content of the last ``tool`` message (empty when none) and
``{user_text}`` the last user text. Nothing else is interpreted; other braces are kept.
Quoted text (the default reply's quote, substitutions in ``reply``) has ``<`` and ``>``
replaced by ``‹`` and ``›`` (``neutralise``), so a quote can never become a
``<message to="…">`` block; substitutions in tool-call arguments are left as they are.

Tool call ids are ``mock-call-<n>``, numbered across the whole conversation.

A compaction request (system prompt starting with ``COMPACTION_MARKER``) never goes
through the script: it gets a deterministic summary (``compaction.mock_summary``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from carapace.errors import ProviderError
from carapace.record import record

from ..prompt import file_identity, settled
from .base import Message, ProviderConfig, ToolCall, ToolSpec, Turn

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any


SCRIPT_FILE = "mock-script.json"
QUOTE_CHARS = 200
DEFAULT_PREFIX = "Mock reply (no model configured — set a provider in the agent group's config): "

_MESSAGE_RE = re.compile(r"<message\b[^>]*>(.*?)</message>", re.DOTALL)
_TASK_RE = re.compile(r"<task\b[^>]*>.*?Instructions:\n(.*?)</task>", re.DOTALL)
_QUOTED_RE = re.compile(r"\s*<quoted_message\b[^>]*>.*?</quoted_message>\s*", re.DOTALL)
_RULE_KEYS = frozenset({"match", "tool_calls", "reply", "steps", "error"})
_STEP_KEYS = frozenset({"tool_calls", "reply", "error", "pieces", "pause_file"})
PAUSE_MAX_S = 30.0
_CALL_KEYS = frozenset({"name", "arguments", "id"})
_PLAIN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUBST_RE = re.compile(r"\{(?:tool_result|user_text)\}")
_NEUTRAL = str.maketrans({"<": "\u2039", ">": "\u203a"})

_Fail = Callable[[str], ProviderError]


@record(frozen=True)
class ScriptCall:
    name: str
    arguments: dict[str, Any]
    id: str | None = None


@record(frozen=True)
class ScriptStep:
    reply: str = ""
    tool_calls: tuple[ScriptCall, ...] = ()
    error: str | None = None
    pieces: tuple[str, ...] = ()
    pause_file: str | None = None


@record(frozen=True)
class ScriptRule:
    match: re.Pattern[str] | None
    steps: tuple[ScriptStep, ...]


class MockProvider:
    name: str = "mock"

    def __init__(self, config: ProviderConfig | None = None) -> None:
        self.config = config or ProviderConfig()
        # the script file's rules while ``lstat`` shows the same regular file (issue 19: read
        # and parsed at every turn before); a file changed within the last second is not kept
        self._kept: tuple[tuple[int, ...], list[ScriptRule]] | None = None
        self.clock_ns: Callable[[], int] = time.time_ns

    def complete(self, system: str, messages: list[Message], tools: list[ToolSpec]) -> Turn:
        return self._turn(system, messages)[0]

    def complete_stream(
        self,
        system: str,
        messages: list[Message],
        tools: list[ToolSpec],
        on_text: Callable[[str], None],
    ) -> Turn:
        """``complete``, with a step's ``pieces`` handed to ``on_text`` one by one (a reply
        without pieces is not streamed)."""
        turn, step = self._turn(system, messages)
        if step is None or not step.pieces:
            return turn
        written = ""
        for n, piece in enumerate(step.pieces, start=1):
            if n > 1 and step.pause_file and self.config.agent_dir:
                _wait_for(Path(self.config.agent_dir) / f"{step.pause_file}.{n}")
            written += piece
            on_text(written)
        return turn

    def _turn(self, system: str, messages: list[Message]) -> tuple[Turn, ScriptStep | None]:
        from carapace.runner.compaction import COMPACTION_MARKER, mock_summary

        if system.startswith(COMPACTION_MARKER):  # a compaction summary, never scripted
            return Turn(text=mock_summary(messages)), None
        user_index = _last_user_index(messages)
        user_text = last_user_text(messages)
        rules = self._load_rules()
        rule = next((r for r in rules if r.match is None or r.match.search(user_text)), None)
        if rule is None:
            return Turn(text=f'{DEFAULT_PREFIX}"{neutralise(user_text[:QUOTE_CHARS])}"'), None
        after = messages[user_index + 1 :] if user_index >= 0 else messages
        step_no = sum(1 for m in after if m.get("role") == "assistant")
        if step_no >= len(rule.steps):
            return Turn(text=""), None
        step = rule.steps[step_no]
        if step.error is not None:
            raise ProviderError(step.error)
        subs = {"{tool_result}": _last_tool_result(after), "{user_text}": user_text}
        quoted = {k: neutralise(v) for k, v in subs.items()}  # a quote in a reply
        next_id = _count_tool_calls(messages) + 1
        calls = tuple(
            ToolCall(
                id=c.id or f"mock-call-{next_id + i}",
                name=c.name,
                arguments=_substitute_args(c.arguments, subs),
            )
            for i, c in enumerate(step.tool_calls)
        )
        return Turn(
            text=_substitute(step.reply, quoted),
            tool_calls=calls,
            stop_reason="tool_use" if calls else "end_turn",
        ), step

    def _load_rules(self) -> list[ScriptRule]:
        if "script" in self.config.extra:
            return parse_script(self.config.extra["script"], source='extra["script"]')
        if not self.config.agent_dir:
            return []
        path = Path(self.config.agent_dir) / SCRIPT_FILE
        try:
            ident = file_identity(str(path))  # (None: not a regular file, never kept)
            if ident is not None and self._kept is not None and self._kept[0] == ident:
                return self._kept[1]
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ProviderError(f"Invalid mock script {path}: cannot read it ({exc.strerror})")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ProviderError(f"Invalid mock script {path}: not JSON ({exc})")
        rules = parse_script(data, source=str(path))
        # kept by the file's identity once its times tell a rewrite (prompt.FileCache's rule)
        self._kept = (
            (ident, rules) if ident is not None and settled(ident, self.clock_ns()) else None
        )
        return rules


def last_user_text(messages: list[Message]) -> str:
    """The text of the last user message, unwrapped from the runner's prompt format.

    When the content has ``<message …>…</message>`` elements, this is the (XML-unescaped)
    body of the last one, without its ``<quoted_message>``; for a scheduled task, its
    instructions; otherwise the raw content.
    """
    index = _last_user_index(messages)
    if index < 0:
        return ""
    content = messages[index].get("content", "")
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    bodies = _MESSAGE_RE.findall(text)
    if not bodies:
        tasks = _TASK_RE.findall(text)
        return _unescape(tasks[-1].strip()) if tasks else text
    body = _QUOTED_RE.sub("", bodies[-1], count=1)
    return _unescape(body)


def _unescape(text: str) -> str:
    """``html.unescape``, importing ``html`` only for text with an entity (runner start)."""
    if "&" not in text:
        return text
    import html

    return html.unescape(text)


def neutralise(text: str) -> str:
    """Quoted text with ``<`` and ``>`` turned into ``‹`` and ``›``, so that quoting a
    message (say a note that mentions ``<message to="x">``) never makes routable markup."""
    return text.translate(_NEUTRAL)


def parse_script(data: object, *, source: str) -> list[ScriptRule]:
    """Validate a mock script; raises ``ProviderError`` naming ``source`` and the reason."""

    def fail(reason: str) -> ProviderError:
        return ProviderError(f"Invalid mock script {source}: {reason}")

    if not isinstance(data, list):
        raise fail(f"expected a JSON list of rules, got {type(data).__name__}")
    rules: list[ScriptRule] = []
    for i, item in enumerate(data):
        where = f"rule {i}"
        if not isinstance(item, dict):
            raise fail(f"{where}: expected an object, got {type(item).__name__}")
        unknown = set(item) - _RULE_KEYS
        if unknown:
            raise fail(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        pattern: re.Pattern[str] | None = None
        if "match" in item:
            if not isinstance(item["match"], str):
                raise fail(f"{where}: match must be a string (a Python regex)")
            try:
                pattern = re.compile(item["match"])
            except re.error as exc:
                raise fail(f"{where}: bad regex {item['match']!r} ({exc})")
        if "steps" in item:
            if _STEP_KEYS & set(item):
                raise fail(f"{where}: use either steps or tool_calls/reply/error, not both")
            if not isinstance(item["steps"], list) or not item["steps"]:
                raise fail(f"{where}: steps must be a non-empty list")
            steps = tuple(
                _parse_step(s, f"{where} step {j}", fail) for j, s in enumerate(item["steps"])
            )
        else:
            steps = _shortcut_steps(item, where, fail)
        rules.append(ScriptRule(match=pattern, steps=steps))
    return rules


def _shortcut_steps(item: dict[str, Any], where: str, fail: _Fail) -> tuple[ScriptStep, ...]:
    if not _STEP_KEYS & set(item):
        raise fail(f"{where}: needs steps, tool_calls, reply or error")
    if "error" in item:
        if set(item) - {"match", "error"}:
            raise fail(f"{where}: error cannot be combined with tool_calls or reply")
        return (_parse_step({"error": item["error"]}, where, fail),)
    steps: list[ScriptStep] = []
    if "tool_calls" in item:
        steps.append(_parse_step({"tool_calls": item["tool_calls"]}, where, fail))
    if "reply" in item:
        steps.append(_parse_step({"reply": item["reply"]}, where, fail))
    return tuple(steps)


def _parse_step(step: object, where: str, fail: _Fail) -> ScriptStep:
    if not isinstance(step, dict):
        raise fail(f"{where}: expected an object, got {type(step).__name__}")
    unknown = set(step) - _STEP_KEYS
    if unknown:
        raise fail(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if not step:
        raise fail(f"{where}: needs tool_calls, reply or error")
    reply = step.get("reply", "")
    if not isinstance(reply, str):
        raise fail(f"{where}: reply must be a string")
    pieces = step.get("pieces", [])
    if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
        raise fail(f"{where}: pieces must be a list of strings")
    if pieces and "reply" in step:
        raise fail(f"{where}: use either reply or pieces, not both")
    if pieces:
        reply = "".join(pieces)
    pause = step.get("pause_file")
    if pause is not None and (not isinstance(pause, str) or not _PLAIN_RE.fullmatch(pause)):
        raise fail(f"{where}: pause_file must be a plain file name")
    error = step.get("error")
    if error is not None and (not isinstance(error, str) or len(step) > 1):
        raise fail(f"{where}: error must be a string and stand alone")
    raw_calls = step.get("tool_calls", [])
    if not isinstance(raw_calls, list):
        raise fail(f"{where}: tool_calls must be a list")
    calls: list[ScriptCall] = []
    for k, call in enumerate(raw_calls):
        cwhere = f"{where} tool call {k}"
        if not isinstance(call, dict):
            raise fail(f"{cwhere}: expected an object")
        unknown = set(call) - _CALL_KEYS
        if unknown:
            raise fail(f"{cwhere}: unknown field(s) {', '.join(sorted(unknown))}")
        name, arguments, call_id = call.get("name"), call.get("arguments", {}), call.get("id")
        if not isinstance(name, str) or not name:
            raise fail(f"{cwhere}: name must be a non-empty string")
        if not isinstance(arguments, dict):
            raise fail(f"{cwhere}: arguments must be an object")
        if call_id is not None and not isinstance(call_id, str):
            raise fail(f"{cwhere}: id must be a string")
        calls.append(ScriptCall(name=name, arguments=arguments, id=call_id))
    return ScriptStep(reply=reply, tool_calls=tuple(calls), error=error, pieces=tuple(pieces),
                      pause_file=pause)  # fmt: skip


def _wait_for(path: Path) -> None:
    """Until ``path`` exists, at most ``PAUSE_MAX_S`` (a test's go-ahead; polled)."""
    deadline = time.monotonic() + PAUSE_MAX_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _last_user_index(messages: list[Message]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return -1


def _last_tool_result(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.get("role") == "tool":
            content = message.get("content", "")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def _count_tool_calls(messages: list[Message]) -> int:
    return sum(len(m.get("tool_calls") or ()) for m in messages if m.get("role") == "assistant")


def _substitute(text: str, subs: dict[str, str]) -> str:
    return _SUBST_RE.sub(lambda m: subs[m.group(0)], text)


def _substitute_args(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _substitute(value, subs)
    if isinstance(value, dict):
        return {k: _substitute_args(v, subs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_args(v, subs) for v in value]
    return value
