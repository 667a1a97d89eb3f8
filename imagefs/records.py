"""Records: classes of named fields that cost next to nothing to define.

``@record`` stands in for :func:`dataclasses.dataclass` in the classes a
mount defines before it serves its first byte: the settings, the ``-o``
split, the opener's results and the image headers.  A dataclass writes the
source of its ``__init__``, ``__repr__`` and ``__eq__`` and compiles it when
the class is defined.  On the bench VM that took 0.2-0.9 ms per class, and
3.2 ms of every mount's start for those ten classes, about a quarter of
imagefs's start-up gap to a passthrough filesystem (bench/RESULTS.md,
twenty-fifth session).  A record's methods are shared functions that walk
its field list instead: defining a record costs a few microseconds, and
creating one costs a few microseconds more than a dataclass instance, which
is nothing for objects made once per mount or image.

Supported, with the dataclass meaning: annotated fields in definition order,
a base record's fields first (a subclass may give one a new default);
defaults; ``field(default_factory=...)``; ``eq=False`` (compared by
identity, hashable).  ``ClassVar`` annotations are not fields.  Not
supported: frozen, slots, order, keyword-only fields, ``__post_init__``.
Classes that need those, and are not on the start-up path, stay
dataclasses.

Type checkers read ``@record`` as a dataclass (PEP 681
``dataclass_transform``), so constructor calls are checked as before.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:                                           # Python 3.10: only type checkers need it
    def dataclass_transform(**_: object) -> Callable[[T], T]:
        return lambda function: function

#: Marks a field without a default.
_REQUIRED: Any = object()


class _Factory:
    """What :func:`field` leaves in the class body until ``@record`` reads it."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made afresh for each instance (a list, a dict)."""
    return _Factory(default_factory)  # type: ignore[return-value]


#: One field: its name, its default (``_REQUIRED`` if none) and its factory.
_Spec = tuple[str, Any, Callable[[], object] | None]


def field_names(obj: object) -> tuple[str, ...]:
    """The field names of a record class or instance, in constructor order."""
    specs: tuple[_Spec, ...] = obj.__record_fields__  # type: ignore[attr-defined]
    return tuple(name for name, _, _ in specs)


def _init(self: object, *args: object, **kwargs: object) -> None:
    """The ``__init__`` of every record: positional, then keyword, then defaults."""
    specs: tuple[_Spec, ...] = self.__record_fields__  # type: ignore[attr-defined]
    cls = type(self).__qualname__
    if len(args) > len(specs):
        raise TypeError(f"{cls}() takes {len(specs)} arguments but {len(args)} were given")
    for i, (name, default, factory) in enumerate(specs):
        if i < len(args):
            if name in kwargs:
                raise TypeError(f"{cls}() got multiple values for argument {name!r}")
            value = args[i]
        elif name in kwargs:
            value = kwargs.pop(name)
        elif factory is not None:
            value = factory()
        elif default is not _REQUIRED:
            value = default
        else:
            raise TypeError(f"{cls}() missing required argument: {name!r}")
        setattr(self, name, value)
    if kwargs:
        raise TypeError(f"{cls}() got an unexpected keyword argument {next(iter(kwargs))!r}")


def _repr(self: object) -> str:
    names = field_names(self)
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: object, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return all(getattr(self, name) == getattr(other, name) for name in field_names(self))


def _own_fields(cls: type) -> list[_Spec]:
    """The fields ``cls`` itself declares; removes the factory markers from the class."""
    own: list[_Spec] = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, _REQUIRED)
        if isinstance(value, _Factory):
            delattr(cls, name)                 # as dataclasses: no class-level default
            own.append((name, _REQUIRED, value.make))
        elif isinstance(value, (list, dict, set)):
            raise ValueError(f"{cls.__qualname__}.{name}: a mutable default would be "
                             "shared by every instance; use field(default_factory=...)")
        else:
            own.append((name, value, None))
    return own


def _make_record(cls: type, eq: bool) -> type:
    merged: dict[str, _Spec] = {}
    for base in reversed(cls.__mro__[1:]):
        for spec in base.__dict__.get("__record_fields__", ()):
            merged[spec[0]] = spec
    for spec in _own_fields(cls):
        merged[spec[0]] = spec                 # a redefinition keeps the base's place
    seen_default = ""
    for name, default, factory in merged.values():
        if default is _REQUIRED and factory is None:
            if seen_default:
                raise TypeError(f"{cls.__qualname__}: field {name!r} without a default "
                                f"follows {seen_default!r}, which has one")
        elif not seen_default:
            seen_default = name
    cls.__record_fields__ = tuple(merged.values())  # type: ignore[attr-defined]
    if "__init__" not in cls.__dict__:
        cls.__init__ = _init  # type: ignore[misc]
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = _repr  # type: ignore[assignment,method-assign]
    if eq and "__eq__" not in cls.__dict__:
        cls.__eq__ = _eq  # type: ignore[assignment,method-assign]
        cls.__hash__ = None  # type: ignore[assignment]  # mutable and compared by value
    return cls


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, eq: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *,
           eq: bool = True) -> type[T] | Callable[[type[T]], type[T]]:
    """Make ``cls`` a record: ``@record`` or ``@record(eq=False)``."""
    if cls is None:
        return lambda c: _make_record(c, eq)
    return _make_record(cls, eq)
