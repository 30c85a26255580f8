"""``carapace.record``: the runner's classes without ``dataclasses`` (issue 19, cold start).

Each behaviour the runner relies on is checked against what ``@dataclass`` does for the
same class, so a record can stand in for a dataclass wherever the runner used one.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from typing import ClassVar

import pytest

from carapace.record import FrozenRecordError, field, fields, record, replace


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    KIND: ClassVar[str] = "point"


@record
class Bag:
    name: str
    items: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DPoint:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    KIND: ClassVar[str] = "point"


def test_init_takes_positions_and_keywords_with_defaults_like_a_dataclass() -> None:
    assert (Point(1).x, Point(1).y, Point(1).tags) == (1, 0, ())
    assert Point(1, 2) == Point(x=1, y=2) == Point(y=2, x=1)
    assert fields(Point) == tuple(f.name for f in dataclasses.fields(DPoint)) == ("x", "y", "tags")
    assert Point.__match_args__ == DPoint.__match_args__
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, (), 4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, z=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, x=1)  # type: ignore[misc]


def test_classvar_is_not_a_field() -> None:
    assert "KIND" not in fields(Point)
    assert Point(1).KIND == "point"


def test_factory_defaults_are_made_per_instance() -> None:
    a, b = Bag("a"), Bag("b")
    a.items.append("x")
    a.seen["k"] = 1
    assert b.items == [] and b.seen == {}
    assert Bag("c", ["given"]).items == ["given"]
    assert "items" not in Bag.__dict__  # no shared class attribute left behind


def test_a_mutable_default_is_refused() -> None:
    with pytest.raises(ValueError, match="default_factory"):

        @record
        class Bad:
            items: list[str] = []  # noqa: RUF012


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="follows a default"):

        @record
        class Bad:
            a: int = 1
            b: int  # type: ignore[misc]


def test_frozen_records_refuse_assignment_and_hash_by_their_fields() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenRecordError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):  # as dataclasses.FrozenInstanceError is one
        del p.y  # type: ignore[misc]
    with pytest.raises(FrozenRecordError):
        p.other = 1  # type: ignore[attr-defined]
    assert p.x == 1
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert {Point(1, 2), Point(1, 2), Point(2, 1)} == {Point(1, 2), Point(2, 1)}


def test_mutable_records_assign_and_are_unhashable_like_eq_dataclasses() -> None:
    b = Bag("a")
    b.name = "renamed"
    assert b.name == "renamed"
    with pytest.raises(TypeError):
        hash(b)


def test_eq_compares_fields_of_the_same_class_only() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != DPoint(1, 2)  # another class: NotImplemented, then identity
    assert Point(1, 2).__eq__((1, 2, ())) is NotImplemented


def test_repr_reads_like_a_dataclass_repr() -> None:
    assert repr(Point(1, 2, ("a",))) == "Point(x=1, y=2, tags=('a',))"
    assert repr(Bag("n", ["i"])) == "Bag(name='n', items=['i'], seen={})"


def test_replace_copies_with_changes_and_names_an_unknown_field() -> None:
    p = Point(1, 2, ("t",))
    q = replace(p, y=9)
    assert q == Point(1, 9, ("t",)) and p == Point(1, 2, ("t",))
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)
    with pytest.raises(TypeError, match="not a record"):
        fields(DPoint(1))


def test_inherited_fields_come_first_and_post_init_runs() -> None:
    calls: list[str] = []

    @record
    class Base:
        a: int
        b: int = 2

    @record
    class Child(Base):
        c: int = 3

        def __post_init__(self) -> None:
            calls.append(f"{self.a}{self.b}{self.c}")

    assert fields(Child) == ("a", "b", "c")
    assert Child(1) == Child(1, 2, 3)
    assert calls == ["123", "123"]


def test_cached_property_works_on_a_frozen_record_and_records_pickle() -> None:
    @record(frozen=True)
    class Paths:
        root: str

        @functools.cached_property
        def inbound(self) -> str:
            return self.root + "/inbound.db"

    p = Paths("/s")
    assert p.inbound == "/s/inbound.db" and p.inbound is p.inbound
    assert pickle.loads(pickle.dumps(Point(1, 2))) == Point(1, 2)


def test_init_is_compiled_at_the_first_instance_and_kept() -> None:
    """The compiled ``__init__`` is made when the class is first called (a runner start
    defines many records it never makes), then it is the class's own; a wrong call fails
    as a dataclass's does, the first time as every time."""

    @record
    class Late:
        a: int
        b: str = "x"

    first = Late.__init__
    assert "compile" in first.__code__.co_names  # not compiled yet
    with pytest.raises(TypeError):
        Late()  # type: ignore[call-arg]
    assert Late(1).b == "x"
    made = Late.__init__
    assert made is not first and "compile" not in made.__code__.co_names
    assert Late(2, b="y") == Late(2, "y")
    assert Late.__init__ is made
    assert made.__qualname__ == first.__qualname__ == f"{Late.__qualname__}.__init__"

    class Plain(Late):  # a subclass that is no record inherits the compiled one
        pass

    assert Plain(3).a == 3


def test_a_plain_subclass_making_the_first_instance_compiles_for_the_record() -> None:
    @record(frozen=True)
    class Base:
        a: int

    class Child(Base):
        pass

    assert Child(1).a == 1
    assert "compile" not in Base.__init__.__code__.co_names
    assert Base(2) == Base(2) and hash(Base(2)) == hash(Base(2))
