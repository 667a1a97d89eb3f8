"""@record: the dataclass stand-in of the start-up path behaves as a dataclass would."""

from __future__ import annotations

from typing import ClassVar

import pytest
from imagefs.records import field, field_names, record


@record
class Point:
    """Two required fields, a default, a fresh list each time."""

    x: int
    y: int
    label: str = "p"
    tags: list[str] = field(default_factory=list)
    KIND: ClassVar[str] = "point"


@record(eq=False)
class Node:
    name: str
    children: list[str] = field(default_factory=list)


@record(eq=False)
class Leaf(Node):
    depth: int = 0
    name: str = "leaf"          # a base field given a default keeps its place


def test_fields_fill_from_positions_keywords_and_defaults():
    p = Point(1, y=2)
    assert (p.x, p.y, p.label, p.tags) == (1, 2, "p", [])
    assert Point(1, 2, "q", ["a"]).tags == ["a"]
    assert field_names(Point) == ("x", "y", "label", "tags")
    assert field_names(p) == field_names(Point)


def test_each_instance_gets_its_own_default_list():
    a, b = Point(0, 0), Point(0, 0)
    a.tags.append("mine")
    assert b.tags == []
    assert "tags" not in Point.__dict__            # no class-level factory marker left


def test_class_variables_are_not_fields():
    assert "KIND" not in field_names(Point)
    assert Point(0, 0).KIND == "point"


@pytest.mark.parametrize("call, message", [
    (lambda: Point(1), "missing required argument: 'y'"),
    (lambda: Point(1, 2, "a", [], "extra"), "takes 4 arguments but 5 were given"),
    (lambda: Point(1, 2, x=3), "multiple values for argument 'x'"),
    (lambda: Point(1, 2, colour="red"), "unexpected keyword argument 'colour'"),
])
def test_bad_calls_are_refused_as_a_dataclass_would(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_repr_and_value_equality():
    assert repr(Point(1, 2)) == "Point(x=1, y=2, label='p', tags=[])"
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != (1, 2, "p", [])
    with pytest.raises(TypeError):
        hash(Point(1, 2))                          # mutable and compared by value


def test_eq_false_compares_by_identity_and_hashes():
    a, b = Node("n"), Node("n")
    assert a != b and a == a
    assert len({a, b}) == 2


def test_a_subclass_adds_fields_after_its_bases_fields():
    leaf = Leaf()
    assert field_names(Leaf) == ("name", "children", "depth")
    assert (leaf.name, leaf.children, leaf.depth) == ("leaf", [], 0)
    assert Leaf("x", ["c"], 3).depth == 3
    with pytest.raises(TypeError, match="missing required argument: 'name'"):
        Node()


def test_definitions_a_dataclass_refuses_are_refused():
    with pytest.raises(TypeError, match="'y' without a default follows 'x'"):
        @record
        class Bad:
            x: int = 0
            y: int
    with pytest.raises(ValueError, match="mutable default"):
        @record
        class Shared:
            items: list[int] = []          # the mistake under test


def test_a_class_keeps_its_own_methods():
    @record
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

    assert repr(Named("a")) == "<a>"
