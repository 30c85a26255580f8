"""What every agent tool gets: the ``ToolContext``, the ``Tool`` record, argument checks.

A handler returns the text shown to the agent, or raises ``ToolError`` (shown as
``Error: <message>`` with ``is_error``; the messages are NanoClaw's, spec §8).
Arguments are checked against the tool's JSON schema first (types, enums, array items);
missing required values are left to the handlers so their error texts match NanoClaw's.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from carapace.record import field, record
from carapace.runner.config import RunnerConfig
from carapace.runner.inbound import Destination, Inbound, Routing
from carapace.runner.outbound import Outbound
from carapace.runner.providers.base import ToolSpec
from carapace.timefmt import new_id

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any

    from carapace.runner.workspace import Workspace


@functools.cache
def _sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (``_sha2``, 3.12+; ``_sha256``, 3.11): the same digests as
    ``hashlib``'s, which loads OpenSSL (about 3 ms of a runner's start, issue 19)."""
    for name in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            pass
    import hashlib

    return hashlib.sha256


def _digest(text: str) -> str:
    """The first 20 hex digits of ``text``'s SHA-256 (the stable ids of a batch's rows)."""
    return str(_sha256()(text.encode("utf-8", "replace")).hexdigest()[:20])


class ToolError(Exception):
    """A refused tool call; the message is shown to the agent after ``Error: ``."""


class TurnAbandoned(Exception):
    """The runner is shutting down: stop the turn, release its claims, reply nothing."""


MAX_ANSWERS = 100  # batch ids a reply names in ``content["answers"]``


@record
class Batch:
    """The conversation a turn answers: the triggering row's id and routing.

    ``sent`` counts the rows the turn's tools wrote so far: with the trigger's id it makes
    each tool row's id (:meth:`stable_id`), so a turn retried after its runner died writes
    the same ids and a message it had already sent is not sent again."""

    in_reply_to: str | None = None
    origin: Routing = field(default_factory=Routing)
    ids: tuple[str, ...] = ()
    sent: int = 0

    def stable_id(self, prefix: str = "msg") -> str:
        """The id of the turn's next tool-written row: the same on every try of the batch."""
        if not self.in_reply_to:
            return new_id(prefix)
        self.sent += 1
        digest = _digest(self.in_reply_to)
        return f"{prefix}-t{digest}-{self.sent}"

    def reply_id(self) -> str:
        """The id of the turn's plain reply row (and of its preview, ``runner/preview.py``):
        the same on every try of the batch."""
        if not self.in_reply_to:
            return new_id("msg")
        digest = _digest(self.in_reply_to)
        return f"msg-t{digest}-reply"

    def answers(self) -> list[str]:
        """The inbound ids a reply to this batch answers (several senders may wait for it);
        empty for a batch of one (``in_reply_to`` says it all)."""
        return list(self.ids[:MAX_ANSWERS]) if len(self.ids) > 1 else []


@record
class ToolContext:
    config: RunnerConfig
    inbound: Inbound
    outbound: Outbound
    now: Callable[[], datetime]
    heartbeat: Callable[[], None] = lambda: None
    wait: Callable[[float], None] = lambda _s: None  # block until inbound changes or timeout
    should_stop: Callable[[], bool] = lambda: False
    workspace: Workspace | None = None
    batch: Batch = field(default_factory=Batch)

    @property
    def agent_group_id(self) -> str:
        return self.config.session_dir.parent.name

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.inbound.destinations() if d.name == name), None)

    def conversation_routing(self) -> Routing:
        """Where cards, questions and tasks go: the batch's chat, else ``session_routing``.

        (NanoClaw always used ``session_routing``, W-10; an agent origin is not a chat.)
        """
        origin = self.batch.origin
        if not origin.empty and origin.channel_type != "agent":
            return origin
        return self.inbound.session_routing()

    def resolve_path(self, path: str) -> Path:
        """A file the agent names: relative to the group folder, confined to the workspace."""
        if self.workspace is not None:
            from carapace.runner.workspace_specs import WorkspaceError

            try:
                return Path(self.workspace.resolve(path))
            except WorkspaceError as exc:
                raise ToolError(str(exc)) from None
        real = os.path.realpath(os.path.join(self.config.agent_dir, path))
        roots = [os.path.realpath(self.config.agent_dir), os.path.realpath(self.config.session_dir)]
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            raise ToolError(f"The path {path!r} is outside the workspace.")
        return Path(real)


Handler = Callable[[ToolContext, dict[str, "Any"]], str]


@record(frozen=True)
class Tool:
    spec: ToolSpec
    handler: Handler
    enabled: Callable[[RunnerConfig], bool] = lambda _config: True  # offered to the agent?


def tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=description,
        input_schema={"type": "object", "properties": properties, "required": required},
    )


_TYPES: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def check_value(schema: dict[str, Any], value: object, where: str) -> str | None:
    kinds = schema.get("type")
    if kinds is not None:
        allowed = kinds if isinstance(kinds, list) else [kinds]
        if not any(_TYPES[k](value) for k in allowed if k in _TYPES):
            return f"{where} must be a JSON {' or '.join(allowed)}, got {_json_type(value)}"
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(str(v) for v in schema["enum"])
        return f"{where} must be one of {options}, got {value!r}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = check_value(schema["items"], item, f"{where}[{i}]")
            if problem:
                return problem
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        for key, sub in schema["properties"].items():
            if key in value and value[key] is not None:
                problem = check_value(sub, value[key], f"{where}.{key}")
                if problem:
                    return problem
    return None


def validate_args(spec: ToolSpec, args: object) -> dict[str, Any] | str:
    """The arguments with nulls dropped, or the first problem found."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        return f"expected a JSON object of arguments, got {_json_type(args)}"
    props: dict[str, Any] = spec.input_schema.get("properties", {})
    out: dict[str, Any] = {}
    for key, value in args.items():
        if value is None:
            continue
        if key in props:
            if props[key].get("type") == "integer":
                value = _as_int(value)
            problem = check_value(props[key], value, key)
            if problem:
                return problem
        out[key] = value
    return out


def _as_int(value: object) -> object:
    """Integers sent as 3.0 or "3" (models do that) become 3; anything else is unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__
