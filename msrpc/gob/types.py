"""
Go types as seen from Python: what a value becomes on the gob wire.

Python is ambiguous where Go is not (one ``int`` for Go's ``int``, ``int64``, ``uint8``...),
and a msgo peer does no conversion: an ``int`` argument sent to ``Find(id int64)`` makes it
panic.  So every Go type can be named from Python:

- value classes: ``Int64(7)``, ``Uint8(3)``, ``Float32(1.5)``... are ``int``/``float``/
  ``complex`` subclasses that travel as that Go type (and arrive as that class);
- :class:`GoType` objects (``INT64``, ``slice_of(STRING)``, ``map_of(STRING, INTERFACE)``...)
  describe composite types; ``typed(value, go_type)`` sends a value as one of them;
- annotations: a dataclass registered with :func:`msrpc.gob.register` describes a Go
  struct through its field annotations (``Id: Int64``, ``Tags: list[str]``, ``Data: Any``,
  ``When: datetime``, or ``Annotated[list[int], array_of(INT, 3)]`` for anything else).

Plain Python values default to: ``bool`` → bool, ``int`` → int, ``float`` → float64,
``complex`` → complex128, ``str`` → string, ``bytes`` → []uint8, ``None`` → nil, an aware
``datetime`` → time.Time, a list → a slice, a dict → a map.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import struct
import types
import typing
from typing import Any, Callable, ClassVar, Iterable, Optional, TypeVar, Union

import attr

# Wire ids of gob's predefined types (encoding/gob doc.go).
BOOL_ID, INT_ID, UINT_ID, FLOAT_ID, BYTES_ID, STRING_ID, COMPLEX_ID, INTERFACE_ID = range(1, 9)
#: The first id an encoder may give a type of its own.
FIRST_USER_ID = 64

T = TypeVar("T", bound=type)


class GoType:
    """A Go type: how values of it are written, and the name Go gives it."""

    __slots__ = ("name", "_hash")
    #: bool, int, uint, float, complex, string, bytes, interface, slice, array, map,
    #: struct or opaque (a GobEncoder/BinaryMarshaler type such as time.Time).
    kind: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        #: Go's name for the type (``reflect.Type.String()``), which is also the name an
        #: interface value of it carries unless registered otherwise.
        self.name = name
        self._hash: Optional[int] = None

    def __repr__(self) -> str:
        return f"<Go {self.name}>"

    def __call__(self, value: Any) -> "Typed":
        """``INT64(7)``: the value, sent as this type (see :func:`typed`)."""
        return typed(value, self)

    @property
    def wire_id(self) -> int:
        """The predefined wire id, or 0 for types a stream defines itself."""
        return 0

    def _key(self) -> Any:
        return (self.kind, self.name)

    def __eq__(self, other: object) -> bool:
        return self is other or isinstance(other, GoType) and self._key() == other._key()

    def __hash__(self) -> int:
        found = self._hash
        if found is None:
            found = self._hash = hash(self._key())
        return found


class Basic(GoType):
    """A predefined scalar type: bool, the ints and uints, floats, complex, string, []byte."""

    __slots__ = ("kind_", "id", "bits", "value_class", "low", "high")

    def __init__(self, name: str, kind: str, wire_id: int, bits: int = 0) -> None:
        super().__init__(name)
        self.kind_ = kind
        self.id = wire_id
        #: Width for range checks (ints, uints, floats, complex); 0: none.
        self.bits = bits
        #: The values an integer type holds.
        self.low, self.high = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if kind == "int"
                               else (0, (1 << bits) - 1) if kind == "uint" else (0, 0))
        #: The Python class values of this type arrive as (set with the value classes).
        self.value_class: Optional[type] = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.kind_

    @property
    def wire_id(self) -> int:
        return self.id

    def _key(self) -> Any:
        return self.name


class Interface(GoType):
    """``interface{}``: the value carries its concrete type's registered name."""

    __slots__ = ()
    kind = "interface"

    @property
    def wire_id(self) -> int:
        return INTERFACE_ID


class Slice(GoType):
    __slots__ = ("elem",)
    kind = "slice"

    def __init__(self, elem: GoType, name: Optional[str] = None) -> None:
        super().__init__(name or f"[]{elem.name}")
        self.elem = elem

    def _key(self) -> Any:
        return ("slice", self.elem)


class Array(GoType):
    __slots__ = ("elem", "length")
    kind = "array"

    def __init__(self, elem: GoType, length: int, name: Optional[str] = None) -> None:
        if length < 0:
            raise ValueError("array length must be >= 0")
        super().__init__(name or f"[{length}]{elem.name}")
        self.elem = elem
        self.length = length

    def _key(self) -> Any:
        return ("array", self.elem, self.length)


class Map(GoType):
    __slots__ = ("key", "elem")
    kind = "map"

    def __init__(self, key: GoType, elem: GoType, name: Optional[str] = None) -> None:
        super().__init__(name or f"map[{key.name}]{elem.name}")
        self.key = key
        self.elem = elem

    def _key(self) -> Any:
        return ("map", self.key, self.elem)


@dataclasses.dataclass(frozen=True)
class Field:
    """One exported field of a Go struct and the Python attribute that holds it."""

    go_name: str
    attribute: str
    type: GoType
    #: Declared ``Optional``: a nil pointer, None when absent.
    optional: bool = False


class Struct(GoType):
    """
    A Go struct.  ``name`` is the name interface values of it carry (the registered name,
    e.g. ``"*model.Goods"``); ``short_name`` the one its type definition carries
    (``"Goods"``).  ``cls`` builds and takes apart its Python values; without one (a
    struct known only from the wire) values are dicts keyed by Go field name.
    """

    __slots__ = ("short_name", "_fields", "cls", "_by_go_name", "_init_names", "_resolve")
    kind = "struct"

    def __init__(self, name: str, fields: Iterable[Field] = (), cls: Optional[type] = None,
                 short_name: Optional[str] = None) -> None:
        super().__init__(name)
        self.short_name = short_name or go_short_name(name)
        self.cls = cls
        self._fields: tuple[Field, ...] = ()
        self._by_go_name: dict[str, Field] = {}
        self._init_names: dict[str, str] = {}
        #: Reads the fields off the class when first needed (they may name classes that
        #: did not exist yet when this one was registered).
        self._resolve: Optional[Callable[[], None]] = None
        self.set_fields(fields)

    @property
    def fields(self) -> tuple[Field, ...]:
        if self._resolve is not None:
            self._resolve()
        return self._fields

    def set_fields(self, fields: Iterable[Field]) -> None:
        self._fields = tuple(fields)
        self._by_go_name = {f.go_name: f for f in self._fields}
        self._resolve = None

    def field(self, go_name: str) -> Optional[Field]:
        if self._resolve is not None:
            self._resolve()
        return self._by_go_name.get(go_name)

    def _key(self) -> Any:
        if self.cls is None:  # known only by its fields (a struct shown inertly)
            return ("struct", self.name, tuple((f.go_name, f.type) for f in self._fields))
        return ("struct", self.name, self.cls)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Struct) and self._key() == other._key())

    def __hash__(self) -> int:
        return hash(self._key())


class Opaque(GoType):
    """
    A type Go sends through its own marshaller (GobEncoder, BinaryMarshaler or
    TextMarshaler): on the wire a byte string.  ``load``/``dump`` convert it to and from
    a Python value; without them the value is a :class:`GobEncoded`.
    """

    __slots__ = ("short_name", "marshaler", "load", "dump", "py_class")
    kind = "opaque"
    #: wireType field numbers of the three marshaller kinds.
    MARSHALERS = {"gob": 4, "binary": 5, "text": 6}

    def __init__(self, name: str, marshaler: str = "gob", *,
                 load: Optional[Callable[[bytes], Any]] = None,
                 dump: Optional[Callable[[Any], bytes]] = None,
                 py_class: Optional[type] = None, short_name: Optional[str] = None) -> None:
        if marshaler not in self.MARSHALERS:
            raise ValueError(f"marshaler must be one of {', '.join(self.MARSHALERS)}")
        super().__init__(name)
        self.short_name = short_name or go_short_name(name)
        self.marshaler = marshaler
        self.load = load
        self.dump = dump
        self.py_class = py_class

    def _key(self) -> Any:
        return ("opaque", self.name, self.marshaler)


def go_short_name(name: str) -> str:
    """``"*github.com/x/model.Goods"`` → ``"Goods"``: the name a type definition carries."""
    return name.lstrip("*").rpartition("/")[2].rpartition(".")[2]


# --------------------------------------------------------------------------- predefined

BOOL = Basic("bool", "bool", BOOL_ID)
INT = Basic("int", "int", INT_ID, 64)
INT8 = Basic("int8", "int", INT_ID, 8)
INT16 = Basic("int16", "int", INT_ID, 16)
INT32 = Basic("int32", "int", INT_ID, 32)
INT64 = Basic("int64", "int", INT_ID, 64)
UINT = Basic("uint", "uint", UINT_ID, 64)
UINT8 = Basic("uint8", "uint", UINT_ID, 8)
UINT16 = Basic("uint16", "uint", UINT_ID, 16)
UINT32 = Basic("uint32", "uint", UINT_ID, 32)
UINT64 = Basic("uint64", "uint", UINT_ID, 64)
UINTPTR = Basic("uintptr", "uint", UINT_ID, 64)
FLOAT32 = Basic("float32", "float", FLOAT_ID, 32)
FLOAT64 = Basic("float64", "float", FLOAT_ID, 64)
COMPLEX64 = Basic("complex64", "complex", COMPLEX_ID, 64)
COMPLEX128 = Basic("complex128", "complex", COMPLEX_ID, 128)
STRING = Basic("string", "string", STRING_ID)
#: ``[]byte``; Go names it ``[]uint8``.
BYTES = Basic("[]uint8", "bytes", BYTES_ID)
INTERFACE = Interface("interface {}")

BASICS: tuple[Basic, ...] = (BOOL, INT, INT8, INT16, INT32, INT64, UINT, UINT8, UINT16,
                             UINT32, UINT64, UINTPTR, FLOAT32, FLOAT64, COMPLEX64,
                             COMPLEX128, STRING, BYTES)


def slice_type(elem: GoType, name: Optional[str] = None) -> GoType:
    """``[]elem``; ``[]uint8`` is Go's ``[]byte`` (:data:`BYTES`)."""
    return BYTES if elem is UINT8 and name is None else Slice(elem, name)


def slice_of(elem: Any, name: Optional[str] = None) -> GoType:
    """``[]elem`` (``elem`` a GoType, value class or annotation)."""
    return slice_type(go_type(elem), name)


def array_of(elem: Any, length: int, name: Optional[str] = None) -> Array:
    """``[length]elem``."""
    return Array(go_type(elem), length, name)


def map_of(key: Any, elem: Any, name: Optional[str] = None) -> Map:
    """``map[key]elem``."""
    return Map(go_type(key), go_type(elem), name)


# --------------------------------------------------------------------------- value classes


class _GoNumber:
    """What the value classes share: their Go type, a repr naming it, pickling."""

    go: ClassVar[Basic]
    #: int, float or complex.
    base: ClassVar[type]
    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "go" in cls.__dict__:
            cls.go.value_class = cls

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base(self)!r})"

    def __reduce__(self) -> Any:
        return (type(self), (self.base(self),))


class _GoInt(_GoNumber, int):
    """Base of the integer value classes: range-checked on construction."""

    base = int
    __slots__ = ()
    __str__ = int.__repr__

    def __new__(cls, value: Any = 0) -> Any:
        self = super().__new__(cls, value)
        if not cls.go.low <= self <= cls.go.high:
            raise OverflowError(f"{int(self)} is out of range for Go {cls.go.name}")
        return self


class _GoFloat(_GoNumber, float):
    """Base of Float32/Float64: a float32 is rounded as Go rounds it."""

    base = float
    __slots__ = ()
    __str__ = float.__repr__

    def __new__(cls, value: Any = 0.0) -> Any:
        number = float(value)
        if cls.go.bits == 32:
            number = round_float32(number)
        return super().__new__(cls, number)


class _GoComplex(_GoNumber, complex):
    """Base of Complex64/Complex128: a complex64's parts are rounded to float32."""

    base = complex
    __slots__ = ()
    __str__ = complex.__repr__

    def __new__(cls, real: Any = 0.0, imag: Any = 0.0) -> Any:
        number = complex(real, imag)
        if cls.go.bits == 64:
            number = complex(round_float32(number.real), round_float32(number.imag))
        return super().__new__(cls, number)


def round_float32(number: float) -> float:
    """The float32 nearest to ``number`` (as Go's conversion); too big: OverflowError."""
    if math.isnan(number) or math.isinf(number):
        return number
    try:
        return float(struct.unpack("<f", struct.pack("<f", number))[0])
    except OverflowError:
        raise OverflowError(f"{number!r} is out of range for Go float32") from None


def int_range(go: Basic) -> tuple[int, int]:
    """The values an integer Go type holds."""
    return go.low, go.high


class Int(_GoInt):
    """An ``int`` that travels as Go's ``int`` (what a plain ``int`` does too)."""
    go = INT


class Int8(_GoInt):
    """An ``int`` that travels as Go's ``int8``."""
    go = INT8


class Int16(_GoInt):
    """An ``int`` that travels as Go's ``int16``."""
    go = INT16


class Int32(_GoInt):
    """An ``int`` that travels as Go's ``int32`` (``rune``)."""
    go = INT32


class Int64(_GoInt):
    """An ``int`` that travels as Go's ``int64``."""
    go = INT64


class Uint(_GoInt):
    """An ``int`` that travels as Go's ``uint``."""
    go = UINT


class Uint8(_GoInt):
    """An ``int`` that travels as Go's ``uint8`` (``byte``)."""
    go = UINT8


class Uint16(_GoInt):
    """An ``int`` that travels as Go's ``uint16``."""
    go = UINT16


class Uint32(_GoInt):
    """An ``int`` that travels as Go's ``uint32``."""
    go = UINT32


class Uint64(_GoInt):
    """An ``int`` that travels as Go's ``uint64``."""
    go = UINT64


class Uintptr(_GoInt):
    """An ``int`` that travels as Go's ``uintptr``."""
    go = UINTPTR


class Float32(_GoFloat):
    """A ``float`` that travels as Go's ``float32`` (rounded to it)."""
    go = FLOAT32


class Float64(_GoFloat):
    """A ``float`` that travels as Go's ``float64`` (what a plain ``float`` does too)."""
    go = FLOAT64


class Complex64(_GoComplex):
    """A ``complex`` that travels as Go's ``complex64``."""
    go = COMPLEX64


class Complex128(_GoComplex):
    """A ``complex`` that travels as Go's ``complex128``."""
    go = COMPLEX128


# Plain Python values of these types arrive as the builtins, not as a subclass.
INT.value_class = None
FLOAT64.value_class = None
COMPLEX128.value_class = None


# --------------------------------------------------------------------------- typed values


class Typed:
    """A value together with the Go type it is sent as (``typed(v, t)`` or ``t(v)``)."""

    __slots__ = ("value", "type")

    def __init__(self, value: Any, go: GoType) -> None:
        self.value = value
        self.type = go

    def __repr__(self) -> str:
        return f"typed({self.value!r}, {self.type.name})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Typed) and self.type == other.type
                and self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def typed(value: Any, go: Any) -> Typed:
    """``value`` sent as the Go type ``go`` (a GoType, value class or annotation), e.g.
    ``typed([1, 2], slice_of(INT64))`` or ``typed({"a": 1}, map_of(STRING, INT))``."""
    return Typed(value, go_type(go))


@dataclasses.dataclass(frozen=True)
class GobEncoded:
    """The bytes of a value Go marshalled itself (GobEncoder...) and msrpc cannot read."""

    type_name: str
    data: bytes


# --------------------------------------------------------------------------- time.Time

_GO_EPOCH = dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)


def load_time(data: bytes) -> dt.datetime:
    """Go's ``Time.MarshalBinary`` → an aware datetime (nanoseconds cut to microseconds)."""
    if not data or data[0] not in (1, 2) or len(data) != 15 + (data[0] == 2):
        raise ValueError("not a Go time.Time (MarshalBinary v1/v2)")
    seconds, nanos, offset_min = struct.unpack(">qih", data[1:15])
    if not 0 <= nanos < 1_000_000_000:
        raise ValueError("time.Time nanoseconds out of range")
    offset = 0 if offset_min == -1 else offset_min * 60 + (data[15] if data[0] == 2 else 0)
    if data[0] == 2 and data[15] > 127:
        offset -= 256  # int8 seconds of the offset
    try:
        moment = _GO_EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
        zone = dt.timezone.utc if offset_min == -1 else dt.timezone(
            dt.timedelta(seconds=offset))
        return moment.astimezone(zone)
    except (OverflowError, ValueError) as e:
        raise ValueError(f"time.Time outside what Python's datetime holds: {e}") from None


def dump_time(moment: Any) -> bytes:
    if not isinstance(moment, dt.datetime) or moment.utcoffset() is None:
        raise TypeError("time.Time needs an aware datetime (one with a tzinfo)")
    offset = moment.utcoffset()
    assert offset is not None
    delta = moment - _GO_EPOCH
    seconds = delta.days * 86400 + delta.seconds
    nanos = delta.microseconds * 1000
    if moment.tzinfo is dt.timezone.utc:
        return struct.pack(">Bqih", 1, seconds, nanos, -1)
    total = int(offset.total_seconds())
    minutes, extra = divmod(abs(total), 60)
    minutes = -minutes if total < 0 else minutes
    if extra:
        return struct.pack(">Bqihb", 2, seconds, nanos, minutes, -extra if total < 0 else extra)
    if minutes == -1:
        raise ValueError("Go cannot send a zone offset of exactly -1 minute")
    return struct.pack(">Bqih", 1, seconds, nanos, minutes)


#: Go's ``time.Time`` (a GobEncoder); aware ``datetime`` values travel as it.
TIME = Opaque("time.Time", "gob", load=load_time, dump=dump_time, py_class=dt.datetime,
              short_name="Time")


# --------------------------------------------------------------------------- annotations

_BY_PY_TYPE: dict[Any, GoType] = {
    bool: BOOL, int: INT, float: FLOAT64, complex: COMPLEX128, str: STRING, bytes: BYTES,
    bytearray: BYTES, dt.datetime: TIME, typing.Any: INTERFACE, object: INTERFACE,
}
_LISTS = (list, tuple, set, frozenset, typing.List, typing.Sequence, typing.Tuple,
          typing.Set, typing.FrozenSet, typing.Iterable)
_MAPS = (dict, typing.Dict, typing.Mapping)

try:  # collections.abc generics also appear as origins
    import collections.abc as _abc

    _LISTS += (_abc.Sequence, _abc.Iterable, _abc.Set, _abc.MutableSequence)  # type: ignore
    _MAPS += (_abc.Mapping, _abc.MutableMapping)  # type: ignore
except ImportError:  # pragma: no cover
    pass


def go_type(hint: Any, registry: Optional["GobRegistry"] = None) -> GoType:
    """The Go type an annotation (or a GoType, value class, registered class) stands for."""
    return _resolve(hint, registry or default_registry)[0]


def _resolve(hint: Any, registry: "GobRegistry") -> tuple[GoType, bool]:
    """(Go type, declared optional) of an annotation."""
    if isinstance(hint, GoType):
        return hint, False
    if isinstance(hint, type):
        go = getattr(hint, "go", None)
        if isinstance(go, Basic) and issubclass(hint, (_GoInt, _GoFloat, _GoComplex)):
            return go, False
        if hint in _BY_PY_TYPE:
            return _BY_PY_TYPE[hint], False
        if hint in (list, tuple, set, frozenset):
            return Slice(INTERFACE), False
        if hint is dict:
            return Map(STRING, INTERFACE), False
        if hint is type(None):
            return INTERFACE, True
        return registry.struct_for(hint), False
    if hint in _BY_PY_TYPE:
        return _BY_PY_TYPE[hint], False
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin is typing.Annotated:
        for extra in arguments[1:]:
            if isinstance(extra, GoType):
                return extra, _resolve(arguments[0], registry)[1]
        return _resolve(arguments[0], registry)
    if origin is Union or origin is types.UnionType:
        rest = [a for a in arguments if a is not type(None)]
        if len(rest) == 1:
            return _resolve(rest[0], registry)[0], len(rest) != len(arguments)
        return INTERFACE, True
    if origin in _LISTS:
        if origin in (tuple, typing.Tuple) and not (len(arguments) == 2
                                                   and arguments[1] is Ellipsis):
            one = set(arguments)
            return (slice_type(go_type(arguments[0], registry)) if len(one) == 1
                    else Slice(INTERFACE)), False
        return slice_type(go_type(arguments[0], registry) if arguments else INTERFACE), False
    if origin in _MAPS:
        if len(arguments) == 2:
            return Map(go_type(arguments[0], registry), go_type(arguments[1], registry)), False
        return Map(STRING, INTERFACE), False
    if isinstance(hint, TypeVar):
        return INTERFACE, False
    raise TypeError(f"no Go type for the annotation {hint!r}; use a msrpc.gob type "
                    "(Int64, slice_of(...), Annotated[..., GoType]...)")


# --------------------------------------------------------------------------- registry


def go_field_name(attribute: str) -> str:
    """``request_id`` → ``RequestId``; names already capitalized stay as they are."""
    if attribute[:1].isupper():
        return attribute
    return "".join(part[:1].upper() + part[1:] for part in attribute.split("_") if part)


def _declared_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(attribute, __init__ name, Go field name) of a dataclass's or attrs class's fields."""
    found = []
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                found.append((f.name, f.name, f.metadata.get("gob") or go_field_name(f.name)))
    elif attr.has(cls):
        for a in attr.fields(cls):
            if a.init and not a.name.startswith("_"):
                found.append((a.name, a.alias or a.name.lstrip("_"),
                              a.metadata.get("gob") or go_field_name(a.name)))
    else:
        raise TypeError(f"{cls!r} is not a dataclass or attrs class")
    return found


class GobRegistry:
    """
    Go names ↔ Python classes, as ``gob.Register`` on the Go side: an interface value
    carries its concrete type's registered name, and both sides must know it.
    """

    def __init__(self, *, keep_unknown: bool = False) -> None:
        #: Decode an interface value of an unregistered name instead of refusing it: a
        #: struct as an inert ``msrpc.codec.UnknownObject`` (name and fields), anything
        #: else as its plain value.  For tools that show values (``msrpc call``), never
        #: for services.
        self.keep_unknown = keep_unknown
        self._by_name: dict[str, GoType] = {basic.name: basic for basic in BASICS}
        for basic in BASICS:
            if basic is not BYTES:  # gob.Register'ed by Go itself: []int, []string...
                listed = slice_type(basic)
                self._by_name[listed.name] = listed
        self._by_name[TIME.name] = TIME
        self._structs: dict[type, Struct] = {}
        self._names: dict[type, str] = {}
        #: The encoder's type definitions for a top-level type, which a fresh encoder
        #: writes first and always alike (see msrpc.gob.encoder); cleared on changes.
        self.definitions: dict[Any, Any] = {}

    def register(self, name: str, cls: Optional[T] = None) -> Any:
        """
        Register a dataclass or attrs class under the Go name peers use for it (what
        ``gob.Register`` made of the Go type: ``"*model.Goods"`` for ``&model.Goods{}``,
        ``"github.com/you/model.Goods"`` for ``model.Goods{}``).  Usable as a decorator:
        ``@register("*model.Goods")``.  Its fields' annotations give their Go types.
        """
        if cls is None:
            return lambda c: self.register(name, c)
        if not name:
            raise ValueError("a Go type name cannot be empty (it means nil)")
        existing = self._by_name.get(name)
        if existing is not None and not (isinstance(existing, Struct) and existing.cls is cls):
            raise ValueError(f"Go name {name!r} is already registered for {existing!r}")
        self._names[cls] = name
        self._structs.pop(cls, None)
        self.definitions.clear()
        struct_type = self.struct_for(cls)
        self._by_name[name] = struct_type
        try:
            struct_type.fields  # annotation errors now rather than at the first call
        except NameError:
            pass  # names a class defined later: read when first used
        return cls

    def register_type(self, go: GoType, name: Optional[str] = None) -> GoType:
        """Accept interface values named ``name`` (default: Go's name of ``go``), e.g.
        ``register_type(map_of(STRING, INT))`` for a peer that registered
        ``map[string]int``."""
        self._by_name[name or go.name] = go
        return go

    def unregister(self, cls: type) -> None:
        self.definitions.clear()
        name = self._names.pop(cls, None)
        self._structs.pop(cls, None)
        if name is not None:
            self._by_name.pop(name, None)

    def by_name(self, name: str) -> Optional[GoType]:
        """The type interface values named ``name`` decode as (None: unknown)."""
        found = self._by_name.get(name)
        if found is None:
            found = _parse_composite(name, self._by_name)
        return None if found is INTERFACE else found

    def name_of(self, cls: type) -> Optional[str]:
        return self._names.get(cls)

    def struct_for(self, cls: type) -> Struct:
        """The Go struct a dataclass or attrs class stands for (registered or not); its
        fields are read from the class's annotations when first needed."""
        found = self._structs.get(cls)
        if found is not None:
            return found
        declared = _declared_fields(cls)
        struct_type = Struct(self._names.get(cls) or cls.__name__, cls=cls)

        def resolve() -> None:
            # The class itself is in scope, so a field may refer to it (a Go tree).
            hints = typing.get_type_hints(cls, localns={cls.__name__: cls},
                                          include_extras=True)
            struct_type._resolve = None  # the fields may refer back to this struct
            try:
                fields = []
                for attribute, init_name, go_name in declared:
                    if attribute not in hints:
                        raise TypeError(f"{cls.__qualname__}.{attribute} has no annotation")
                    field_type, optional = _resolve(hints[attribute], self)
                    fields.append(Field(go_name, attribute, field_type, optional))
                    struct_type._init_names[attribute] = init_name
            except Exception:
                struct_type._resolve = resolve
                raise
            struct_type.set_fields(fields)

        struct_type._resolve = resolve
        self._structs[cls] = struct_type
        return struct_type

    def init_name(self, struct_type: Struct, attribute: str) -> str:
        return struct_type._init_names.get(attribute, attribute)


def _parse_composite(name: str, known: dict[str, GoType]) -> Optional[GoType]:
    """``[]int64``, ``[3]string``, ``map[[]uint8][]interface {}``..., built from known
    names (Go's ``reflect.Type.String()`` of unnamed composite types)."""
    if len(name) > 512:
        return None
    try:
        found, end = _parse_type(name, 0, known, 0)
    except ValueError:
        return None
    return found if end == len(name) else None


def _parse_type(text: str, at: int, known: dict[str, GoType], depth: int
                ) -> tuple[GoType, int]:
    if depth > 16:
        raise ValueError("too deep")
    if text.startswith("[]", at):
        elem, at = _parse_type(text, at + 2, known, depth + 1)
        return slice_type(elem), at
    if text.startswith("[", at):
        close = text.index("]", at)
        length = text[at + 1:close]
        if not length.isdigit() or len(length) > 9:
            raise ValueError("bad array length")
        elem, at = _parse_type(text, close + 1, known, depth + 1)
        return Array(elem, int(length)), at
    if text.startswith("map[", at):
        key, at = _parse_type(text, at + 4, known, depth + 1)
        if not text.startswith("]", at):
            raise ValueError("map key not closed")
        elem, at = _parse_type(text, at + 1, known, depth + 1)
        return Map(key, elem), at
    if text.startswith(INTERFACE.name, at):
        return INTERFACE, at + len(INTERFACE.name)
    end = text.find("]", at)
    end = len(text) if end < 0 else end
    # the longest known name that starts here
    for stop in range(end, at, -1):
        found = known.get(text[at:stop])
        if found is not None:
            return found, stop
    raise ValueError("unknown name")


default_registry = GobRegistry()


def register(name: str, cls: Optional[T] = None) -> Any:
    """Register a class under a Go name in the default registry (see
    :meth:`GobRegistry.register`)."""
    return default_registry.register(name, cls)


def zero_value(go: GoType, optional: bool = False) -> Any:
    """What a field Go left out (its zero value) is in Python."""
    if optional:
        return None
    kind = go.kind
    if kind in ("int", "uint", "float", "complex"):
        value_class = go.value_class if isinstance(go, Basic) else None
        base = {"int": 0, "uint": 0, "float": 0.0, "complex": 0j}[kind]
        return value_class(base) if value_class is not None else base
    if kind == "bool":
        return False
    if kind == "string":
        return ""
    if kind == "bytes":
        return b""
    if kind == "slice":
        return []
    if kind == "map":
        return {}
    if isinstance(go, Array):
        return [zero_value(go.elem) for _ in range(go.length)]
    return None  # interface, struct pointer, opaque
