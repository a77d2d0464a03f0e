"""
The typed, "gob-like" codec (DESIGN.md section 3).

msgpack carries the primitives; tuples, sets, datetimes, UUIDs, Decimals and the like keep
their types through msgpack ext types; classes registered with :func:`register` travel by
name and decode into the same class.  Decoding never imports or instantiates anything that
was not registered, and the depth and sizes of what it accepts are bounded.

JSON is the alternative serializer for peers without msgpack; it tags the same types with
``{"$type": ...}``-style objects.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from itertools import chain
from typing import Any, Callable, Iterable, Optional, TypeVar, overload

import attr
import msgpack

from msrpc.errors import DecodeError, EncodeError
from msrpc.wire import Serializer

T = TypeVar("T", bound=type)

# msgpack ext type codes.  -1 is msgpack's own Timestamp (timezone-aware datetimes).
EXT_OBJECT = 1
EXT_TUPLE = 2
EXT_SET = 3
EXT_FROZENSET = 4
EXT_UUID = 5
EXT_DECIMAL = 6
EXT_NAIVE_DATETIME = 7
EXT_DATE = 8
EXT_TIME = 9
EXT_TIMEDELTA = 10
EXT_ENUM = 11


@dataclass(frozen=True)
class Limits:
    """
    Bounds on what a decoder accepts from a peer (documented in README, section Limits).

    They hold for every container, string (UTF-8 bytes) and bytes value wherever it nests,
    dict keys included, under both codecs.  msgpack checks them on the wire, so there the
    codec's own envelopes count too: a registered object's ``[name, {fields}]``, an enum's
    ``[name, value]`` and a timedelta's three numbers.
    """

    max_depth: int = 100
    max_container_len: int = 1_000_000
    max_str_len: int = 16 * 1024 * 1024
    max_bin_len: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name} must be positive")

    @property
    def smallest_length(self) -> int:
        """A body no longer than this cannot hold anything too long: no length checks."""
        return min(self.max_str_len, self.max_bin_len, self.max_container_len)


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- type registry


class _Entry:
    """How one registered class is taken apart and put back together."""

    __slots__ = ("name", "cls", "is_enum", "fields")

    def __init__(self, name: str, cls: type) -> None:
        self.name = name
        self.cls = cls
        self.is_enum = isinstance(cls, enum.EnumMeta)
        #: (attribute name, __init__ argument name) of every field that travels.
        self.fields: tuple[tuple[str, str], ...] = ()
        if self.is_enum:
            return
        if dataclasses.is_dataclass(cls):
            self.fields = tuple((f.name, f.name) for f in dataclasses.fields(cls) if f.init)
        elif attr.has(cls):
            self.fields = tuple((a.name, a.alias or a.name.lstrip("_"))
                                for a in attr.fields(cls) if a.init)
        else:
            raise TypeError(f"{cls!r} is not a dataclass, attrs class or Enum; "
                            "only those can be registered")

    def take_apart(self, obj: Any) -> dict[str, Any]:
        return {name: getattr(obj, name) for name, _ in self.fields}

    def build(self, values: Any) -> Any:
        if not isinstance(values, dict):
            raise DecodeError(f"bad payload for registered type {self.name!r}")
        kwargs = {}
        for name, init_name in self.fields:
            if name in values:
                kwargs[init_name] = values[name]
        unknown = set(values) - {name for name, _ in self.fields}
        if unknown:
            raise DecodeError(f"registered type {self.name!r} has no field(s) "
                              f"{', '.join(sorted(map(str, unknown)))}")
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise DecodeError(f"cannot build {self.name!r}: {e}") from None


@dataclass
class UnknownObject:
    """
    A registered type this side never registered, decoded by a ``TypeRegistry(
    keep_unknown=True)`` (the ``msrpc`` command's): its name and fields, as inert data.
    It encodes back to the same name and fields.
    """

    type_name: str
    fields: dict[str, Any]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.fields.items())
        return f"{self.type_name}({fields})"


@dataclass
class UnknownEnum:
    """An enum member of a type this side never registered (see :class:`UnknownObject`)."""

    type_name: str
    value: Any

    def __repr__(self) -> str:
        return f"{self.type_name}({self.value!r})"


class _UnknownEntry:
    """Stands for a name this side never registered, when unknown names are kept."""

    is_enum = True  # an enum payload may name it too: it becomes an UnknownEnum

    def __init__(self, name: str) -> None:
        self.name = name

    def cls(self, value: Any) -> UnknownEnum:
        return UnknownEnum(self.name, value)

    def build(self, values: Any) -> UnknownObject:
        if not isinstance(values, dict):
            raise DecodeError(f"bad payload for registered type {self.name!r}")
        return UnknownObject(self.name, values)


class TypeRegistry:
    """
    Names ↔ classes, as with Go's ``gob.Register``: both sides register the same name.
    An unregistered name fails to decode, unless ``keep_unknown`` is set: then it decodes
    to an inert :class:`UnknownObject` or :class:`UnknownEnum` (for tools that show values
    of types they do not know, never for services).
    """

    def __init__(self, *, keep_unknown: bool = False) -> None:
        self._by_name: dict[str, _Entry] = {}
        self._by_type: dict[type, _Entry] = {}
        self.keep_unknown = keep_unknown

    @overload
    def register(self, cls: T, *, name: Optional[str] = None) -> T: ...

    @overload
    def register(self, cls: None = None, *, name: Optional[str] = None
                 ) -> Callable[[T], T]: ...

    def register(self, cls: Optional[T] = None, *, name: Optional[str] = None) -> Any:
        """Register a dataclass, attrs class or Enum; usable as ``@register`` or
        ``@register(name="billing.Invoice")``.  The name is what travels: keep it stable."""
        if cls is None:
            return lambda c: self.register(c, name=name)
        type_name = name or f"{cls.__module__}.{cls.__qualname__}"
        existing = self._by_name.get(type_name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(f"type name {type_name!r} is already registered for "
                             f"{existing.cls!r}")
        entry = _Entry(type_name, cls)
        self._by_name[type_name] = entry
        self._by_type[cls] = entry
        return cls

    def unregister(self, cls: type) -> None:
        entry = self._by_type.pop(cls, None)
        if entry is not None:
            self._by_name.pop(entry.name, None)

    def name_of(self, cls: type) -> Optional[str]:
        entry = self._by_type.get(cls)
        return entry.name if entry else None

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def entry_for_name(self, type_name: Any) -> _Entry | _UnknownEntry:
        entry = self._by_name.get(type_name) if isinstance(type_name, str) else None
        if entry is None:
            if self.keep_unknown and isinstance(type_name, str):
                return _UnknownEntry(type_name)
            raise DecodeError(f"unknown type {type_name!r}: not registered on this side "
                              "(msrpc.codec.register it on both ends)")
        return entry

    def entry_for_type(self, cls: type) -> Optional[_Entry]:
        return self._by_type.get(cls)


default_registry = TypeRegistry()


@overload
def register(cls: T, *, name: Optional[str] = None) -> T: ...


@overload
def register(cls: None = None, *, name: Optional[str] = None) -> Callable[[T], T]: ...


def register(cls: Any = None, *, name: Optional[str] = None) -> Any:
    """Register a class in the default registry (see :meth:`TypeRegistry.register`)."""
    return default_registry.register(cls, name=name)


# --------------------------------------------------------------------------- depth bound

# Bytes that may start a container or ext in msgpack: fixmap/fixarray, array16/32,
# map16/32, ext8/16/32, fixext.  Their count bounds the nesting depth from above, so a
# body with few of them (every ordinary message) needs no walk at all.
_MSGPACK_NESTING = bytes(list(range(0x80, 0xA0)) + [0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6,
                                                    0xD7, 0xD8, 0xDC, 0xDD, 0xDE, 0xDF])
_DELETE_NOT_MSGPACK_NESTING = bytes(b for b in range(256) if b not in _MSGPACK_NESTING)
_DELETE_NOT_JSON_NESTING = bytes(b for b in range(256) if b not in b"[{")


#: Bodies longer than this are not scanned byte by byte for nesting (``translate`` costs
#: about 0.5 ns a byte: 0.4 ms for 1 MiB, most of decoding a 1 MiB blob).  Their decoded
#: value is walked instead, as long as that visits at most one value per
#: ``_BYTES_PER_VISIT`` bytes of body: a blob is a handful of values, whatever its size.
_SCAN_MAX = 4096
_BYTES_PER_VISIT = 64
#: msgpack bodies longer than this (and at most ``_SCAN_MAX``) are decoded counting their
#: containers, one hook call each, instead of scanned: a body made of few containers (a
#: blob, a string, a record) costs a few calls instead of a byte scan.  Counting stops
#: past one container per ``_BYTES_PER_CONTAINER`` bytes (a call costs what the scan
#: of that many bytes does), and the body is then decoded and scanned as before.
_COUNT_FROM = 256
_BYTES_PER_CONTAINER = 128
#: After a body that was not worth counting, the next this many are scanned directly.
_SCAN_AFTER_MISS = 16
#: Values that hold nothing (the walk skips them without a look).
_SCALARS = frozenset({int, float, bool, type(None), str, bytes, Decimal, uuid.UUID,
                      dt.datetime, dt.date, dt.time, dt.timedelta})
_SEQUENCES = frozenset({list, tuple, set, frozenset})


def _nests_within(value: Any, max_depth: int, budget: int) -> Optional[bool]:
    """
    Whether ``value`` nests at most ``max_depth`` levels, found by walking its containers
    level by level; None when that would visit more than ``budget`` values (the caller
    then falls back to its byte scan).  Containers are told from scalars by exact class,
    registered objects by their fields.  Each level's values are gathered with list
    extensions and sifted once: wide values (lists of records) cost little per value.
    """
    level = [value]
    for _ in range(max_depth):
        below: list[Any] = []
        for obj in level:
            cls = obj.__class__
            if cls is dict:
                below += obj  # keys can nest: tuples...
                below += obj.values()
            elif cls in _SEQUENCES:
                below += obj
            elif dataclasses.is_dataclass(obj) or attr.has(cls):
                below += _limit_children(obj)
        budget -= len(below)
        if budget < 0:
            return None
        level = [obj for obj in below if obj.__class__ not in _SCALARS]
        if not level:
            return True
    return not any(obj.__class__ is dict or obj.__class__ in _SEQUENCES or
                   dataclasses.is_dataclass(obj) or attr.has(obj.__class__)
                   for obj in level)


def _limit_children(obj: Any) -> list[Any]:
    """The field values of a dataclass or attrs instance."""
    if dataclasses.is_dataclass(obj):
        return [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    return [getattr(obj, a.name) for a in attr.fields(type(obj))]


def _depth_broken(value: Any, data: bytes, limits: Limits,
                  may_nest_deeper: Callable[[bytes], bool]) -> Optional[str]:
    """What breaks the nesting limit in ``value`` decoded from ``data``, or None.  Codecs
    call it for every body longer than ``_SCAN_MAX`` and for shorter ones whose byte scan
    (``may_nest_deeper``, cheap on them) found enough nesting bytes; a long body is walked
    instead when it is made of few values, and scanned when it is not."""
    size = len(data)
    # A short body, which its scan found many nesting bytes in, is walked whatever its
    # number of values (at most one a byte); a long one only if it is made of few.
    within = _nests_within(value, limits.max_depth,
                           size if size <= _SCAN_MAX else size // _BYTES_PER_VISIT)
    if within is not None:
        return None if within else f"value nests deeper than {limits.max_depth} levels"
    if size > _SCAN_MAX and not may_nest_deeper(data):
        return None
    return _limit_broken(value, limits, sizes=False)


def _limit_broken(value: Any, limits: Limits, sizes: bool) -> Optional[str]:
    """
    What in ``value`` breaks ``limits``, or None.  Always its nesting; with ``sizes`` also the
    lengths of its containers, strings (UTF-8 bytes) and bytes, for JSON, whose parser cannot
    check them while parsing as msgpack's does.  Iterative: no recursion however deep.
    """
    max_depth = limits.max_depth
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if obj.__class__ in _SCALARS:  # most values: skip the class inspections below
            if sizes:
                problem = _size_broken(obj, limits)
                if problem is not None:
                    return problem
            continue
        if isinstance(obj, dict):
            children: Iterable[Any] = chain(obj, obj.values())  # keys can nest: tuples...
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = obj
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            children = (getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif attr.has(type(obj)):
            children = (getattr(obj, a.name) for a in attr.fields(type(obj)))
        else:
            if sizes:
                problem = _size_broken(obj, limits)
                if problem is not None:
                    return problem
            continue
        if depth > max_depth:
            return f"value nests deeper than {max_depth} levels"
        if sizes and isinstance(obj, (dict, list, tuple, set, frozenset)) and \
                len(obj) > limits.max_container_len:
            return (f"container of {len(obj)} items exceeds the limit of "
                    f"{limits.max_container_len}")
        stack.extend((child, depth + 1) for child in children)
    return None


def _size_broken(obj: Any, limits: Limits) -> Optional[str]:
    if isinstance(obj, str):
        limit = limits.max_str_len
        # Characters <= UTF-8 bytes <= 4 characters: encode only when it can matter.
        if len(obj) > limit or (
                4 * len(obj) > limit and len(obj.encode("utf-8", "surrogatepass")) > limit):
            return f"string longer than the limit of {limit} bytes"
    elif isinstance(obj, bytes) and len(obj) > limits.max_bin_len:
        return f"bytes longer than the limit of {limits.max_bin_len}"
    return None


# --------------------------------------------------------------------------- msgpack


class _Uncounted(Exception):
    """A counted decode stopped: more containers than were worth counting, or a
    registered type (whose class is built by one decode only: the plain one)."""


#: What ``MsgpackCodec._decode_counted`` returns when it stopped.
_UNCOUNTED: Any = object()


class MsgpackCodec:
    """The default serializer (wire serializer id 2).  Like its reused ``Packer``, a
    codec decodes on one thread at a time (the reactor's)."""

    serializer = int(Serializer.MSGPACK)
    name = "msgpack"

    def __init__(self, registry: TypeRegistry = default_registry,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry
        self.limits = limits
        self._small = limits.smallest_length  # the common case: no explicit caps
        # Reused for top-level encodes (cheaper than packb); nested ext payloads use packb
        # because a Packer is not re-entrant.
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True,
                                      strict_types=True, autoreset=True)
        #: Containers a counted decode may still meet (-1: not counting), at most:
        self._left = -1
        self._max_left = limits.max_depth
        #: Bodies to scan instead of count, after one that was not worth counting.
        self._scan_next = 0
        self._count = self._counted  # the hook, bound once

    # -- encoding
    def encode(self, obj: Any) -> bytes:
        try:
            return self._packer.pack(obj)
        except EncodeError:
            self._packer.reset()
            raise
        except (TypeError, ValueError, OverflowError) as e:
            self._packer.reset()
            raise EncodeError(f"cannot encode value: {e}") from None

    def _pack(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=self._default, use_bin_type=True, strict_types=True)

    def _default(self, obj: Any) -> Any:
        cls = type(obj)
        entry = self.registry.entry_for_type(cls)
        if entry is not None:
            if entry.is_enum:
                return msgpack.ExtType(EXT_ENUM, self._pack([entry.name, obj.value]))
            return msgpack.ExtType(EXT_OBJECT, self._pack([entry.name, entry.take_apart(obj)]))
        if cls is tuple:
            return msgpack.ExtType(EXT_TUPLE, self._pack(list(obj)))
        if cls is set:
            return msgpack.ExtType(EXT_SET, self._pack(list(obj)))
        if cls is frozenset:
            return msgpack.ExtType(EXT_FROZENSET, self._pack(list(obj)))
        if cls is uuid.UUID:
            return msgpack.ExtType(EXT_UUID, obj.bytes)
        if cls is Decimal:
            return msgpack.ExtType(EXT_DECIMAL, str(obj).encode("ascii"))
        if cls is dt.datetime:
            if obj.tzinfo is not None and obj.utcoffset() is not None:
                return _timestamp(obj)
            return msgpack.ExtType(EXT_NAIVE_DATETIME, obj.isoformat().encode("ascii"))
        if cls is dt.date:
            return msgpack.ExtType(EXT_DATE, obj.isoformat().encode("ascii"))
        if cls is dt.time:
            return msgpack.ExtType(EXT_TIME, obj.isoformat().encode("ascii"))
        if cls is dt.timedelta:
            return msgpack.ExtType(EXT_TIMEDELTA,
                                   self._pack([obj.days, obj.seconds, obj.microseconds]))
        if cls is UnknownObject:
            return msgpack.ExtType(EXT_OBJECT, self._pack([obj.type_name, obj.fields]))
        if cls is UnknownEnum:
            return msgpack.ExtType(EXT_ENUM, self._pack([obj.type_name, obj.value]))
        return _plain_base(obj)

    # -- decoding
    def decode(self, data: bytes) -> Any:
        size = len(data)
        if _COUNT_FROM < size <= _SCAN_MAX and size <= self._small:
            if self._scan_next:
                self._scan_next -= 1
            else:
                value = self._decode_counted(data, size)
                if value is not _UNCOUNTED:
                    return value
        try:
            value = self._unpack(data)
        except DecodeError:
            raise
        except msgpack.ExtraData:
            raise DecodeError("trailing bytes after the msgpack value") from None
        except RecursionError:
            raise DecodeError("value nests too deeply") from None
        except Exception as e:  # FormatError, StackError, ValueError(limits), Unicode, ...
            raise DecodeError(f"malformed msgpack: {e}") from None
        # Every level of nesting takes a byte at least.
        if size > self.limits.max_depth and (size > _SCAN_MAX or self._may_nest_deeper(data)):
            problem = _depth_broken(value, data, self.limits, self._may_nest_deeper)
            if problem is not None:
                raise DecodeError(problem)
        return value

    def _may_nest_deeper(self, data: bytes) -> bool:
        return len(data.translate(None, _DELETE_NOT_MSGPACK_NESTING)) > self.limits.max_depth

    def _decode_counted(self, data: bytes, size: int) -> Any:
        """
        ``data`` decoded with each container counted (ext payloads' too): as long as they
        are at most its budget, which is below ``max_depth``, nothing in it can nest too
        deep and no scan is needed.  ``_UNCOUNTED`` when counting stopped, or the body is
        malformed: the plain decode then decodes it again, or says what is wrong.
        """
        left = size // _BYTES_PER_CONTAINER
        self._left = left if left <= self._max_left else self._max_left
        try:
            return msgpack.unpackb(data, ext_hook=self._ext_hook, timestamp=3,
                                   strict_map_key=False, object_hook=self._count,
                                   list_hook=self._count)
        except Exception:
            self._scan_next = _SCAN_AFTER_MISS
            return _UNCOUNTED
        finally:
            self._left = -1

    def _counted(self, container: Any) -> Any:
        left = self._left - 1
        if left < 0:
            raise _Uncounted()
        self._left = left
        return container

    def _unpack(self, data: bytes) -> Any:
        """
        Unpack a body, or the payload of an ext (tuple, set, registered object...), within the
        limits.  msgpack hands ext payloads to ``_ext_hook`` as opaque bytes, unchecked, so
        each payload is unpacked under the same caps as the body around it.
        """
        size = len(data)
        if size <= self._small:
            # msgpack's own defaults already bound every length by the buffer size.
            if self._left >= 0:  # an ext payload of a counted decode: counted too
                return msgpack.unpackb(data, ext_hook=self._ext_hook, timestamp=3,
                                       strict_map_key=False, object_hook=self._count,
                                       list_hook=self._count)
            return msgpack.unpackb(data, ext_hook=self._ext_hook, timestamp=3,
                                   strict_map_key=False)
        limits = self.limits
        return msgpack.unpackb(
            data, ext_hook=self._ext_hook, timestamp=3, strict_map_key=False,
            max_str_len=min(limits.max_str_len, size),
            max_bin_len=min(limits.max_bin_len, size),
            max_array_len=min(limits.max_container_len, size),
            max_map_len=min(limits.max_container_len, size // 2),
            max_ext_len=size)

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if self._left >= 0 and (code == EXT_OBJECT or code == EXT_ENUM):
            raise _Uncounted()  # a registered class is built by the plain decode only
        try:
            if code == EXT_OBJECT:
                pair = self._unpack(data)
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise DecodeError("malformed registered-type payload")
                return self.registry.entry_for_name(pair[0]).build(pair[1])
            if code == EXT_TUPLE:
                return tuple(self._unpack(data))
            if code == EXT_SET:
                return set(self._unpack(data))
            if code == EXT_FROZENSET:
                return frozenset(self._unpack(data))
            if code == EXT_UUID:
                return uuid.UUID(bytes=data)
            if code == EXT_DECIMAL:
                return Decimal(data.decode("ascii"))
            if code == EXT_NAIVE_DATETIME:
                return dt.datetime.fromisoformat(data.decode("ascii"))
            if code == EXT_DATE:
                return dt.date.fromisoformat(data.decode("ascii"))
            if code == EXT_TIME:
                return dt.time.fromisoformat(data.decode("ascii"))
            if code == EXT_TIMEDELTA:
                days, seconds, micros = self._unpack(data)
                return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
            if code == EXT_ENUM:
                type_name, value = self._unpack(data)
                entry = self.registry.entry_for_name(type_name)
                if not entry.is_enum:
                    raise DecodeError(f"{type_name!r} is not an enum")
                return entry.cls(value)
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError(f"bad payload for ext type {code}: {e}") from None
        raise DecodeError(f"unknown msgpack ext type {code}")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _timestamp(moment: dt.datetime) -> msgpack.Timestamp:
    """
    An aware datetime as a msgpack Timestamp, exactly.  msgpack's own
    ``Timestamp.from_datetime`` went through a float until 2026 (msgpack-python #662, #710):
    with the msgpack 1.0.x this package allows, 2024-04-16 08:43:09.420317 came back a
    microsecond early, and the year 3000 a second late.
    """
    delta = moment - _EPOCH
    return msgpack.Timestamp(delta.days * 86400 + delta.seconds, delta.microseconds * 1000)


def _plain_base(obj: Any) -> Any:
    """Unregistered subclasses of builtins travel as the builtin (like plain msgpack does)."""
    for base in (bool, int, float, str, bytes, list, dict):
        if isinstance(obj, base):
            return base(obj)  # type: ignore[arg-type]  # isinstance above
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise EncodeError(f"cannot encode {type(obj).__module__}.{type(obj).__qualname__}: "
                      "register it with msrpc.codec.register")


# --------------------------------------------------------------------------- JSON


def _looks_tagged(obj: dict[Any, Any]) -> bool:
    """Whether the JSON decoder would take this plain dict for one of its tagged values."""
    if not obj or len(obj) > 2:
        return False
    key = next(iter(obj))
    return isinstance(key, str) and key.startswith("$")


def _escape_dicts(obj: Any) -> Any:
    """``obj`` with every plain dict that looks tagged turned into ``{"$dict": pairs}``."""
    cls = type(obj)
    if cls is dict:
        escaped = {k: _escape_dicts(v) for k, v in obj.items()}
        return {"$dict": [[k, v] for k, v in escaped.items()]} if _looks_tagged(obj) \
            else escaped
    if cls is list or cls is tuple:
        return [_escape_dicts(v) for v in obj]
    return obj


class JsonCodec:
    """
    The alternative serializer (wire serializer id 3) for peers without msgpack.  Types
    JSON lacks travel as one-key tagged objects (``{"$set": [...]}``); tuples become lists.
    A user's dict that would read as a tag travels as ``{"$dict": [[key, value], ...]}``.
    """

    serializer = int(Serializer.JSON)
    name = "json"

    def __init__(self, registry: TypeRegistry = default_registry,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.registry = registry
        self.limits = limits
        self._small = limits.smallest_length  # the common case: no size walk
        self._encoder = json.JSONEncoder(default=self._default, separators=(",", ":"),
                                         ensure_ascii=False, allow_nan=True)

    def encode(self, obj: Any) -> bytes:
        try:
            text = self._encoder.encode(obj)
            if '{"$' in text:
                # A tag, or a user's dict that looks like one: encode again with such
                # dicts escaped so they come back as dicts (rare; costs a second pass).
                text = self._encoder.encode(_escape_dicts(obj))
            return text.encode("utf-8")
        except EncodeError:
            raise
        except (TypeError, ValueError, RecursionError) as e:
            raise EncodeError(f"cannot encode value as JSON: {e}") from None

    def _default(self, obj: Any) -> Any:
        cls = type(obj)
        entry = self.registry.entry_for_type(cls)
        if entry is not None:
            if entry.is_enum:
                return {"$enum": entry.name, "$value": obj.value}
            return {"$type": entry.name, "$fields": _escape_dicts(entry.take_apart(obj))}
        if cls in (set, frozenset):
            return {"$set" if cls is set else "$frozenset": list(obj)}
        if cls in (bytes, bytearray, memoryview):
            return {"$bytes": base64.b64encode(bytes(obj)).decode("ascii")}
        if cls is uuid.UUID:
            return {"$uuid": str(obj)}
        if cls is Decimal:
            return {"$decimal": str(obj)}
        if cls in (dt.datetime, dt.date, dt.time):
            return {"$" + cls.__name__: obj.isoformat()}
        if cls is dt.timedelta:
            return {"$timedelta": [obj.days, obj.seconds, obj.microseconds]}
        if cls is UnknownObject:
            return {"$type": obj.type_name, "$fields": _escape_dicts(obj.fields)}
        if cls is UnknownEnum:
            return {"$enum": obj.type_name, "$value": obj.value}
        raise EncodeError(f"cannot encode {cls.__module__}.{cls.__qualname__}: "
                          "register it with msrpc.codec.register")

    def decode(self, data: bytes) -> Any:
        try:
            value = json.loads(data, object_hook=self._object_hook)
        except DecodeError:
            raise
        except RecursionError:
            raise DecodeError("value nests too deeply") from None
        except Exception as e:
            raise DecodeError(f"malformed JSON: {e}") from None
        size = len(data)
        if size > self._small:
            problem = _limit_broken(value, self.limits, sizes=True)
        elif size > self.limits.max_depth and (size > _SCAN_MAX or
                                               self._may_nest_deeper(data)):
            problem = _depth_broken(value, data, self.limits, self._may_nest_deeper)
        else:
            return value
        if problem is not None:
            raise DecodeError(problem)
        return value

    def _may_nest_deeper(self, data: bytes) -> bool:
        return len(data.translate(None, _DELETE_NOT_JSON_NESTING)) > self.limits.max_depth

    def _object_hook(self, obj: dict[str, Any]) -> Any:
        if not obj or len(obj) > 2:
            return obj
        key = next(iter(obj))
        if not (isinstance(key, str) and key.startswith("$")):
            return obj
        try:
            if key == "$type" and "$fields" in obj:
                return self.registry.entry_for_name(obj["$type"]).build(obj["$fields"])
            if key == "$enum" and "$value" in obj:
                entry = self.registry.entry_for_name(obj["$enum"])
                return entry.cls(obj["$value"]) if entry.is_enum else obj
            if len(obj) != 1:
                return obj
            value = obj[key]
            if key == "$dict":
                return {k: v for k, v in value}
            if key == "$set":
                return set(value)
            if key == "$frozenset":
                return frozenset(value)
            if key == "$bytes":
                return base64.b64decode(value, validate=True)
            if key == "$uuid":
                return uuid.UUID(value)
            if key == "$decimal":
                return Decimal(value)
            if key == "$datetime":
                return dt.datetime.fromisoformat(value)
            if key == "$date":
                return dt.date.fromisoformat(value)
            if key == "$time":
                return dt.time.fromisoformat(value)
            if key == "$timedelta":
                return dt.timedelta(days=value[0], seconds=value[1], microseconds=value[2])
        except DecodeError:
            raise
        except (TypeError, ValueError, InvalidOperation, IndexError) as e:
            raise DecodeError(f"bad {key} value: {e}") from None
        return obj


# --------------------------------------------------------------------------- selection

Codec = Any  # MsgpackCodec | JsonCodec: encode(obj) -> bytes, decode(bytes) -> obj


def make_codecs(registry: TypeRegistry = default_registry,
                limits: Limits = DEFAULT_LIMITS) -> dict[int, Codec]:
    """The codecs a peer understands, by wire serializer id."""
    return {Serializer.MSGPACK: MsgpackCodec(registry, limits),
            Serializer.JSON: JsonCodec(registry, limits)}


SERIALIZERS = {"msgpack": int(Serializer.MSGPACK), "json": int(Serializer.JSON)}


__all__ = ["register", "default_registry", "TypeRegistry", "UnknownObject", "UnknownEnum",
           "Limits", "DEFAULT_LIMITS",
           "MsgpackCodec", "JsonCodec", "make_codecs", "SERIALIZERS"]
