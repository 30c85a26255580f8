"""Plain record classes for the runner's import graph, built without ``dataclasses``.

A runner is a fresh interpreter for every session start, and ``@dataclass`` cost it about
0.8 ms per class (source generated and compiled per method, ``inspect.signature`` for the
docstring) plus 7 ms to import ``dataclasses`` itself (``inspect``, ``ast``, ``dis``,
``tokenize``): 25 ms of a ~110 ms cold start for 21 classes (issue 19). ``@record`` gives
the same class shape for the subset the runner uses, with one small ``__init__`` per class,
compiled when the class is first called (~0.2 ms a class; 6.8 ms of the runner's imports
went to compiling them up front, 1.1 ms is left for the rest of the classes' making):

* fields are the class's own annotations in order (a ``ClassVar`` is not a field), after
  those of a record base class; a class attribute is the default, :func:`field` gives a
  ``default_factory``; a mutable default (list, dict, set) is refused as ``dataclass``
  refuses it;
* ``__init__`` (positional or keyword, then ``__post_init__`` if defined), ``__repr__``,
  ``__eq__`` (same class, field by field) and ``__match_args__``;
* ``frozen=True``: assignment and deletion raise :class:`FrozenRecordError` (an
  ``AttributeError``, as ``dataclasses.FrozenInstanceError``) and the record hashes by its
  fields; otherwise it is unhashable, as an ``eq`` dataclass;
* :func:`replace` and :func:`fields` stand in for ``dataclasses.replace`` / ``fields``.

Instances keep a ``__dict__`` (``functools.cached_property`` works on frozen records).
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # typing is read by type checkers only (runner start, issue 19)
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform, overload

    T = TypeVar("T")

_MUTABLE = (list, dict, set)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


class FrozenRecordError(AttributeError):
    """An assignment to a field of a frozen record."""


class _Factory:
    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made per instance: ``items: list[str] = field(default_factory=list)``."""
    return _Factory(default_factory)  # type: ignore[return-value]


def fields(cls_or_obj: Any) -> tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    names: tuple[str, ...] | None = getattr(cls_or_obj, "__record_fields__", None)
    if names is None:
        raise TypeError(f"{cls_or_obj!r} is not a record")
    return names


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of ``obj`` with ``changes`` (TypeError for a name that is not a field)."""
    names = fields(obj)
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    values = {name: getattr(obj, name) for name in names}
    values.update(changes)
    return type(obj)(**values)


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenRecordError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenRecordError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")


def _own_fields(cls: type) -> list[tuple[str, Any]]:
    """(name, default or _MISSING / _Factory) for the annotations of ``cls`` itself."""
    out: list[tuple[str, Any]] = []
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 - not importing inspect is the point
    for name, note in own.items():
        text = note if isinstance(note, str) else getattr(note, "__name__", repr(note))
        if text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        default = cls.__dict__.get(name, _MISSING)
        if isinstance(default, _MUTABLE):
            raise ValueError(
                f"mutable default {type(default).__name__} for field {name!r} of "
                f"{cls.__name__}: use field(default_factory=...)"
            )
        out.append((name, default))
    return out


def _build(cls: type, frozen: bool) -> type:
    specs: dict[str, Any] = {}
    for base in reversed(cls.__mro__[1:]):
        for name in getattr(base, "__record_fields__", ()):
            specs[name] = base.__record_defaults__.get(name, _MISSING)  # type: ignore[attr-defined]
    for name, default in _own_fields(cls):
        specs[name] = default
        if isinstance(default, _Factory):
            delattr(cls, name)  # the instance's own value always shadows it
    names = tuple(specs)
    params: list[str] = []
    body: list[str] = []
    env: dict[str, Any] = {"_MISSING": _MISSING}
    seen_default = False
    for i, (name, default) in enumerate(specs.items()):
        if default is _MISSING:
            if seen_default:
                raise TypeError(f"non-default field {name!r} of {cls.__name__} follows a default")
            params.append(name)
            body.append(f" d[{name!r}] = {name}")
        elif isinstance(default, _Factory):
            seen_default = True
            env[f"_f{i}"] = default.factory
            params.append(f"{name}=_MISSING")
            body.append(f" d[{name!r}] = _f{i}() if {name} is _MISSING else {name}")
        else:
            seen_default = True
            env[f"_d{i}"] = default
            params.append(f"{name}=_d{i}")
            body.append(f" d[{name!r}] = {name}")
    if hasattr(cls, "__post_init__"):
        body.append(" self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n d = self.__dict__\n" + "\n".join(
        body or [" pass"]
    )
    qualname = f"{cls.__qualname__}.__init__"

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        # compiled at the class's first instance, not at its definition: ~0.2 ms a class,
        # and many of the runner's records are never made in a given run (issue 19)
        exec(compile(source, f"<record {cls.__qualname__}>", "exec"), env)
        made = env["__init__"]
        made.__qualname__ = qualname
        if cls.__dict__.get("__init__") is init:
            cls.__init__ = made  # type: ignore[misc]
        made(self, *args, **kwargs)

    init.__qualname__ = qualname

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    cls.__init__ = init  # type: ignore[misc]
    cls.__repr__ = __repr__  # type: ignore[assignment]
    cls.__eq__ = __eq__  # type: ignore[assignment]
    cls.__match_args__ = names  # type: ignore[attr-defined,misc]
    cls.__record_fields__ = names  # type: ignore[attr-defined]
    cls.__record_defaults__ = {  # type: ignore[attr-defined]
        n: d for n, d in specs.items() if d is not _MISSING
    }
    if frozen:
        cls.__setattr__ = _frozen_setattr  # type: ignore[assignment]
        cls.__delattr__ = _frozen_delattr  # type: ignore[assignment]

        def __hash__(self: Any) -> int:
            return hash(tuple(getattr(self, n) for n in names))

        cls.__hash__ = __hash__  # type: ignore[assignment]
    else:
        cls.__hash__ = None  # type: ignore[assignment]
    return cls


if TYPE_CHECKING:  # the two forms, and a dataclass's fields, for type checkers

    @overload
    def record(cls: type[T], /) -> type[T]: ...
    @overload
    def record(*, frozen: bool = False) -> Callable[[type[T]], type[T]]: ...
    @dataclass_transform(field_specifiers=(field,))
    def record(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
        """``@record`` or ``@record(frozen=True)`` on a class with annotated fields."""
        return _record(cls, frozen)
else:

    def record(cls=None, /, *, frozen=False):
        """``@record`` or ``@record(frozen=True)`` on a class with annotated fields."""
        return _record(cls, frozen)


def _record(cls: type | None, frozen: bool) -> Any:
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)
