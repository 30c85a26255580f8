"""The admin command registry: resources, their verbs and the verbs' options.

One module per resource under ``carapace.admin.resources`` defines ``RESOURCE: Resource``;
``resources()`` loads them in a fixed order (``RESOURCE_MODULES``, with a slot for
``tasks``) and then any other module dropped into the package. A verb is reached as the
frame command ``<resource>-<verb with spaces as dashes>`` (``groups-config-get``), exactly as
NanoClaw's ``ncl`` names them.

Options are declared with snake_case names (the column names) and written on the command
line in kebab case (``--unknown-sender-policy``); ``coerce_args`` checks and converts the
raw values of a frame.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from carapace.errors import ValidationError

if TYPE_CHECKING:
    from carapace.admin.context import AdminContext

Access = Literal["open", "approval", "hidden"]
OptType = Literal["str", "int", "bool", "json", "enum"]
VerbKind = Literal["list", "get", "action"]
JsonKind = type[list[Any]] | type[dict[str, Any]]
Handler = Callable[["AdminContext", dict[str, Any]], Any]
OwnerFn = Callable[["AdminContext", dict[str, Any]], "str | None"]

RESOURCE_MODULES = (
    "groups",
    "messaging_groups",
    "wirings",
    "users",
    "roles",
    "members",
    "destinations",
    "user_dms",
    "dropped_messages",
    "approvals",
    "sessions",
    "tasks",  # slot: carapace/admin/resources/tasks.py (scheduling) registers itself here
)

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


MAX_INT = 2**63 - 1


def _short(raw: Any) -> str:
    """A bad value as shown in an error line: its repr, cut to 60 characters."""
    text = repr(raw)
    return text if len(text) <= 60 else text[:59] + "…"


@dataclass(frozen=True)
class Opt:
    """One option of a verb; ``name`` is snake_case, the CLI spells it ``--kebab-case``."""

    name: str
    help: str = ""
    type: OptType = "str"
    required: bool = False
    choices: tuple[str, ...] = ()
    json_kind: JsonKind | None = None  # for type "json": list or dict
    minimum: int | None = None  # for type "int"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        if self.type == "bool":
            value = ""
        elif self.type == "enum":
            value = " " + "|".join(self.choices)
        elif self.type == "json":
            value = " JSON"
        elif self.type == "int":
            value = " N"
        else:
            value = " " + self.name.upper().replace("_", "-")
        return f"{self.flag}{value}"

    def coerce(self, raw: Any) -> Any:
        """The value a handler gets for ``raw`` (from argv: a string or True)."""
        if self.type == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, int) and raw in (0, 1):
                return bool(raw)
            if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValidationError(f"{self.flag} takes true or false (got {_short(raw)})")
        if raw is True:
            raise ValidationError(f"{self.flag} needs a value")
        if self.type == "int":
            if isinstance(raw, bool):
                raise ValidationError(f"{self.flag} takes an integer (got {_short(raw)})")
            try:
                number = raw if isinstance(raw, int) else int(str(raw).strip())
            except ValueError:
                raise ValidationError(f"{self.flag} takes an integer (got {_short(raw)})")
            if self.minimum is not None and number < self.minimum:
                raise ValidationError(f"{self.flag} must be at least {self.minimum}")
            if not -MAX_INT <= number <= MAX_INT:  # SQLite's integers are 64-bit
                raise ValidationError(f"{self.flag} is out of range (at most {MAX_INT})")
            return number
        if self.type == "json":
            value = raw
            if isinstance(raw, str):
                try:
                    value = json.loads(raw)
                except ValueError as exc:
                    raise ValidationError(f"{self.flag} is not valid JSON: {exc}")
            if self.json_kind is not None and not isinstance(value, self.json_kind):
                kind = "an array" if self.json_kind is list else "an object"
                raise ValidationError(f"{self.flag} must be a JSON {kind}")
            return value
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise ValidationError(f"{self.flag} takes a string (got {_short(raw)})")
        value = str(raw)
        if self.type == "enum" and value not in self.choices:
            raise ValidationError(
                f"{self.flag} must be one of {', '.join(self.choices)} (got {_short(value)})"
            )
        return value


@dataclass(frozen=True)
class Verb:
    """One operation of a resource.

    ``access``: ``open`` (anyone, agents included), ``approval`` (agents need an admin's
    click; the operator runs it directly), ``hidden`` (like open, not listed in help).
    ``kind``: ``list``/``get`` rows are post-filtered for agents in group scope; ``action``
    changes something. ``owner`` names the agent group owning the addressed row (None when
    there is no such row): agents in group scope may only address their own group's rows.
    """

    name: str
    handler: Handler
    help: str
    access: Access = "open"
    options: tuple[Opt, ...] = ()
    kind: VerbKind = "action"
    group_scope: bool = True
    host_only: bool = False
    owner: OwnerFn | None = None

    @property
    def mutates(self) -> bool:
        return self.kind == "action"

    def option(self, name: str) -> Opt | None:
        return next((o for o in self.options if o.name == name), None)


@dataclass(frozen=True)
class Resource:
    """A resource: ``name`` is the plural kebab-case word (``messaging-groups``).

    ``group_scope``: usable by agents whose ``cli_scope`` is ``group``; ``scope_field``:
    the row field naming the owning agent group (lists are filtered on it);
    ``id_is_group``: the resource's ``--id`` names an agent group (``groups``).
    """

    name: str
    help: str
    verbs: tuple[Verb, ...]
    scope_field: str | None = None
    group_scope: bool = False
    id_is_group: bool = False
    singular: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def command(self, verb: Verb) -> str:
        return f"{self.name}-{verb.name.replace(' ', '-')}"


@cache
def resources() -> tuple[Resource, ...]:
    """Every registered resource, in help order."""
    found: list[Resource] = []
    names = list(RESOURCE_MODULES)
    import carapace.admin.resources as pkg

    extra = sorted(
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.name.startswith("_") and m.name not in names and m.name != "common"
    )
    for mod_name in [*names, *extra]:
        full = f"carapace.admin.resources.{mod_name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name == full:
                continue  # an empty slot (e.g. tasks not written yet)
            raise
        res = getattr(module, "RESOURCE", None)
        if isinstance(res, Resource):
            found.append(res)
    return tuple(found)


@cache
def commands() -> dict[str, tuple[Resource, Verb]]:
    """Frame command name → (resource, verb)."""
    out: dict[str, tuple[Resource, Verb]] = {}
    for res in resources():
        for verb in res.verbs:
            out[res.command(verb)] = (res, verb)
    return out


def resource(name: str) -> Resource | None:
    return next((r for r in resources() if r.name == name), None)


def resolve(command: str) -> tuple[str, str | None] | None:
    """Split a joined command into (registered command, trailing id or None).

    NanoClaw's client joins every positional word with ``-`` (``groups get ag-1-x`` →
    ``groups-get-ag-1-x``) and its dispatcher strips only the last segment, so an id with a
    dash could not be given positionally (spec §11.1 item 10). Here the longest registered
    command that is a prefix followed by ``-`` wins and the whole rest is the id.
    """
    table = commands()
    if command in table or is_help(command):
        return command, None
    best: str | None = None
    for name in [*table, *(f"{r.name}-help" for r in resources()), "help"]:
        if command.startswith(name + "-") and (best is None or len(name) > len(best)):
            best = name
    if best is None:
        return None
    return best, command[len(best) + 1 :]


def is_help(command: str) -> bool:
    return command == "help" or any(command == f"{r.name}-help" for r in resources())


def coerce_args(verb: Verb, args: dict[str, Any]) -> dict[str, Any]:
    """Check and convert normalised (snake_case) args against the verb's options."""
    known = {o.name: o for o in verb.options}
    unknown = sorted(k for k in args if k not in known)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        allowed = ", ".join(o.flag for o in verb.options) or "none"
        raise ValidationError(f"unknown option(s) {flags} (allowed: {allowed})")
    out: dict[str, Any] = {}
    for name, opt in known.items():
        if name in args and args[name] is not None:
            out[name] = opt.coerce(args[name])
        elif opt.required:
            raise ValidationError(f"missing required option {opt.flag}")
    return out


def normalize_keys(args: dict[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in args.items()}
