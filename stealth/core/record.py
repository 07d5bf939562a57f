# Why: the value types a knock passes around (Secret, Binding, PortRange, Knock, Profile, the client's
# counter state) are immutable records. House style would make them frozen dataclasses, but ssh starts
# stealth-connect on every login and `import dataclasses` alone costs 10.7 ms there (it loads inspect,
# ast, dis, tokenize, re, ...; measured with python -X importtime and wall clock on the 2-core test VM,
# Python 3.11), a third of the 35 ms start-to-socket budget. Record is the little of a frozen dataclass
# those types use, without exec and without importing typing at run time:
# - fields: the class's annotations in order (ClassVar ones excluded), stored in matching __slots__;
# - an explicit, typed __init__ per class, which sets each field with `set_field` (object.__setattr__,
#   as a frozen dataclass's generated __init__ does; a generic loop over the fields took twice as long
#   as a dataclass, which the server's start with a million clients would feel); validation goes
#   there, where __post_init__ was;
# - immutability (assignment and deletion raise FrozenInstanceError, an AttributeError like
#   dataclasses'), equality and hash over the fields (same class only), repr without `_hidden` fields,
#   pickling and copying by the constructor's positional arguments.
# For mypy the base is a dataclass_transform(frozen_default=True): assignments to fields are errors and
# the explicit __init__ is what callers are checked against. Server-only code keeps real dataclasses.
from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False  # typing's own import costs ~3.4 ms at start; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    _T = TypeVar("_T")
else:

    def dataclass_transform(**_: object) -> Callable[[_T], _T]:
        return lambda cls: cls


class FrozenInstanceError(AttributeError):
    """A field of a record was assigned or deleted (the same as dataclasses.FrozenInstanceError)."""


set_field = object.__setattr__  # set_field(self, "name", value): how a record's __init__ sets a field


@dataclass_transform(frozen_default=True)
class Record:
    """Base of an immutable record: declare fields as annotations plus the same names in __slots__,
    and write an __init__ that sets every field with set_field(self, name, value)."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _hidden: ClassVar[frozenset[str]] = frozenset()  # fields repr leaves out (keys)
    _get: ClassVar[attrgetter[Any]]  # the field's value, or a tuple of them (not a descriptor: no self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        notes = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 -- inspect is what we avoid
        fields = tuple(n for n, t in notes.items() if not str(t).startswith(("ClassVar", "typing.ClassVar")))
        slots = cls.__dict__.get("__slots__", ())
        if set(fields) != set(slots) or not set(cls._hidden) <= set(fields):
            raise TypeError(f"{cls.__name__}: __slots__ {slots} must name the annotated fields {fields}, "
                            "and _hidden only fields")
        if not fields:
            raise TypeError(f"{cls.__name__}: a record has fields")
        cls._fields = fields
        cls._get = attrgetter(*fields)

    def _values(self) -> tuple[Any, ...]:
        values = self._get(self)
        return values if len(self._fields) > 1 else (values,)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            same: bool = self._get(self) == self._get(other)
            return same
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._get(self))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields if n not in self._hidden)
        return f"{type(self).__qualname__}({shown})"

    def __reduce__(self) -> tuple[type[Record], tuple[Any, ...]]:
        return type(self), self._values()
