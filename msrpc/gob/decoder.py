"""
Reading a gob stream (Go's ``encoding/gob``; its ``doc.go`` is the spec).

One :func:`decode` call reads what one ``Encoder.Encode`` call of a fresh Go encoder wrote,
as msgo sends it: length-prefixed messages holding type definitions, then the value.  Like
Go's decoder, it accepts type definitions, and new messages, in the middle of an interface
value: Go flushes the message it is building when an interface value needs a new type.

Pure and bounded: every count and length is checked against the bytes that remain and the
:class:`msrpc.codec.Limits` before anything is allocated, nesting is capped, and anything
malformed is a :class:`DecodeError`, never another exception.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from msrpc.codec import DEFAULT_LIMITS, Limits, UnknownObject
from msrpc.errors import DecodeError
from msrpc.gob.types import (
    BOOL_ID, BYTES, BYTES_ID, COMPLEX64, COMPLEX_ID, FIRST_USER_ID, FLOAT32, FLOAT_ID, INT_ID,
    INTERFACE,
    INTERFACE_ID, STRING_ID, TIME, UINT_ID, Array, Basic, GobEncoded, GobRegistry, GoType, Map,
    Opaque, Slice, Struct, load_time, default_registry, round_float32, zero_value,
)

#: Type definitions accepted in one stream (msgo's messages hold a handful).
MAX_TYPES = 4096
#: Longest interface type name (as Go's decoder).
MAX_NAME = 1024
_INT32 = 1 << 31
_BUILTIN_NAMES = {BOOL_ID: "bool", INT_ID: "int", UINT_ID: "uint", FLOAT_ID: "float",
                  BYTES_ID: "[]byte", STRING_ID: "string", COMPLEX_ID: "complex",
                  INTERFACE_ID: "interface"}
#: The ``GoType.kind`` each predefined value type decodes into (the interface aside).
_BASIC_KINDS = {BOOL_ID: "bool", INT_ID: "int", UINT_ID: "uint", FLOAT_ID: "float",
                BYTES_ID: "bytes", STRING_ID: "string", COMPLEX_ID: "complex"}
_double = struct.Struct(">d").unpack
_MISSING = object()
#: Type definitions read before, by their message's bytes (see Decoder._known_definition).
_DEFINITIONS: dict[bytes, tuple[int, "WireType"]] = {}
_MAX_DEFINITIONS = 512
_MAX_DEFINITION_SIZE = 2048


class WireType:
    """A type the stream defined: what its values look like on the wire."""

    __slots__ = ("id", "kind", "name", "elem", "key", "length", "fields", "marshaler")

    def __init__(self, type_id: int, kind: str, name: str) -> None:
        self.id = type_id
        self.kind = kind  # slice, array, map, struct, opaque
        self.name = name
        self.elem = 0
        self.key = 0
        self.length = 0
        #: (Go field name, type id) of a struct, by field number.
        self.fields: list[tuple[str, int]] = []
        self.marshaler = ""

    def describe(self) -> str:
        return f"{self.kind} {self.name}".rstrip() if self.name else self.kind


class Decoder:
    """Decodes one gob stream; see :func:`decode`."""

    def __init__(self, data: bytes, registry: GobRegistry = default_registry,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.data = bytes(data)
        self.size = len(self.data)
        self.pos = 0
        #: End of the message being read.
        self.end = 0
        self.registry = registry
        self.limits = limits
        self.types: dict[int, WireType] = {}
        self.depth = 0

    # ------------------------------------------------------------------ entry point

    def decode(self, target: Optional[GoType] = None) -> Any:
        type_id = self._type_sequence(False)
        value = self._top(type_id, target)
        if self.pos != self.size:
            raise DecodeError(f"{self.size - self.pos} bytes after the gob value")
        return value

    # ------------------------------------------------------------------ primitives

    def _uint_until(self, limit: int) -> int:
        pos = self.pos
        if pos >= limit:
            raise DecodeError("truncated gob data")
        first = self.data[pos]
        if first < 0x80:
            self.pos = pos + 1
            return first
        width = 256 - first
        if width > 8:
            raise DecodeError(f"gob integer of {width} bytes (at most 8)")
        stop = pos + 1 + width
        if stop > limit:
            raise DecodeError("truncated gob integer")
        self.pos = stop
        return int.from_bytes(self.data[pos + 1:stop], "big")

    def _uint(self) -> int:
        return self._uint_until(self.end)

    def _int(self) -> int:
        u = self._uint_until(self.end)
        return ~(u >> 1) if u & 1 else u >> 1

    def _float(self) -> float:
        return float(_double(self._uint_until(self.end).to_bytes(8, "little"))[0])

    def _bytes(self, limit: int) -> bytes:
        count = self._uint_until(self.end)
        if count > self.end - self.pos:
            raise DecodeError(f"gob length {count} runs past its message")
        if count > limit:
            raise DecodeError(f"gob string or bytes of {count} bytes exceeds the limit "
                              f"of {limit}")
        start = self.pos
        self.pos = start + count
        return self.data[start:self.pos]

    def _string(self) -> str:
        return self._bytes(self.limits.max_str_len).decode("utf-8", "surrogateescape")

    def _count(self, per_item: int = 1) -> int:
        """An element count: each element takes at least ``per_item`` bytes of what is
        left of the whole stream (elements of interfaces may continue in later
        messages), and there are at most ``max_container_len`` of them."""
        count = self._uint_until(self.end)
        if count * per_item > self.size - self.pos:
            raise DecodeError(f"gob count {count} exceeds the data left")
        if count > self.limits.max_container_len:
            raise DecodeError(f"gob container of {count} items exceeds the limit of "
                              f"{self.limits.max_container_len}")
        return count

    # ------------------------------------------------------------------ messages and types

    def _next_message(self) -> bool:
        if self.pos >= self.size:
            return False
        length = self._uint_until(self.size)
        if length > self.size - self.pos:
            raise DecodeError(f"gob message of {length} bytes, {self.size - self.pos} left")
        self.end = self.pos + length
        return True

    def _type_sequence(self, in_interface: bool) -> int:
        """Go's ``decodeTypeSequence``: type definitions, then the id of the value."""
        while True:
            if self.pos == self.end:
                if not self._next_message():
                    raise DecodeError("gob stream ends before its value" if self.types or
                                      in_interface else "empty gob stream")
                if self._known_definition():
                    continue
            type_id = self._int()
            if not -_INT32 <= type_id < _INT32:
                raise DecodeError(f"gob type id {type_id} out of range")
            if type_id >= 0:
                return type_id
            self._define(-type_id)
            if self.pos < self.end:
                if not in_interface:
                    raise DecodeError("extra data after a gob type definition")
                self._uint()  # the length of the interface value's next chunk

    def _known_definition(self) -> bool:
        """Whether the message just begun is a type definition read before (by any
        decoder): msgo's bodies each come from a fresh Go encoder and start with the same
        few.  Parsed definitions are kept by their bytes, a bounded number of short ones."""
        message = self.data[self.pos:self.end]
        found = _DEFINITIONS.get(message)
        if found is None:
            if len(message) > _MAX_DEFINITION_SIZE:
                return False
            start = self.pos
            type_id = -self._int()
            if type_id <= 0:  # a value, not a definition
                self.pos = start
                return False
            self._define(type_id)
            if self.pos != self.end:
                raise DecodeError("extra data after a gob type definition")
            if len(_DEFINITIONS) >= _MAX_DEFINITIONS:
                _DEFINITIONS.clear()
            _DEFINITIONS[message] = (type_id, self.types[type_id])
            return True
        type_id, wire = found
        self._check_new(type_id)
        self.types[type_id] = wire
        self.pos = self.end
        return True

    def _check_new(self, type_id: int) -> None:
        if type_id < FIRST_USER_ID or type_id in self.types:
            raise DecodeError(f"gob type {type_id} defined twice or reserved")
        if len(self.types) >= MAX_TYPES:
            raise DecodeError(f"more than {MAX_TYPES} gob type definitions")

    def _define(self, type_id: int) -> None:
        self._check_new(type_id)
        wire: Optional[WireType] = None
        for number in self._field_numbers(7):
            if wire is not None:
                raise DecodeError("gob type definition with two kinds")
            wire = self._wire_type(type_id, number)
        if wire is None:
            raise DecodeError("empty gob type definition")
        self.types[type_id] = wire

    def _field_numbers(self, count: int) -> Any:
        """The field numbers of a struct value, until its end mark (or its message's end,
        which Go's decoder also takes as the end of a struct)."""
        number = -1
        while self.pos < self.end:
            delta = self._uint()
            if delta == 0:
                return
            number += delta
            if number >= count:
                raise DecodeError(f"gob field number {number} out of range")
            yield number

    def _wire_type(self, type_id: int, which: int) -> WireType:
        kind = ("array", "slice", "struct", "map", "opaque", "opaque", "opaque")[which]
        wire = WireType(type_id, kind, "")
        if kind == "opaque":
            wire.marshaler = ("gob", "binary", "text")[which - 4]
        # field count of arrayType, sliceType, structType, mapType, gobEncoderType
        for number in self._field_numbers((3, 2, 2, 3, 1, 1, 1)[which]):
            if number == 0:
                self._common_type(wire)
            elif kind == "struct":
                count = self._count(2)
                for _ in range(count):
                    wire.fields.append(self._field_type())
            elif number == 1:
                if kind == "map":
                    wire.key = self._type_id()
                else:
                    wire.elem = self._type_id()
            elif kind == "map":
                wire.elem = self._type_id()
            else:  # an array's length
                wire.length = self._int()
                if not 0 <= wire.length <= self.limits.max_container_len:
                    raise DecodeError(f"gob array length {wire.length} out of range")
        if kind in ("slice", "array") and not wire.elem or \
                kind == "map" and not (wire.key and wire.elem):
            raise DecodeError(f"gob {kind} type without element type")
        return wire

    def _common_type(self, wire: WireType) -> None:
        for number in self._field_numbers(2):
            if number == 0:
                wire.name = self._bytes(MAX_NAME).decode("utf-8", "replace")
            else:
                self._int()  # the id again; the message's id is the one that counts

    def _field_type(self) -> tuple[str, int]:
        name, type_id = "", 0
        for number in self._field_numbers(2):
            if number == 0:
                name = self._bytes(MAX_NAME).decode("utf-8", "surrogateescape")
            else:
                type_id = self._type_id()
        if not type_id:
            raise DecodeError(f"gob struct field {name!r} without a type")
        return name, type_id

    def _type_id(self) -> int:
        type_id = self._int()
        if not 0 < type_id < _INT32:
            raise DecodeError(f"gob type id {type_id} out of range")
        return type_id

    # ------------------------------------------------------------------ values

    def _wire(self, type_id: int) -> WireType:
        wire = self.types.get(type_id)
        if wire is None:
            raise DecodeError(f"gob value of undefined type {type_id}")
        return wire

    def _describe(self, type_id: int) -> str:
        if type_id in _BUILTIN_NAMES:
            return _BUILTIN_NAMES[type_id]
        wire = self.types.get(type_id)
        return wire.describe() if wire is not None else f"type {type_id}"

    def _mismatch(self, type_id: int, target: GoType) -> DecodeError:
        return DecodeError(f"gob type mismatch: the peer sends {self._describe(type_id)} "
                           f"where {target.name} is expected")

    def _top(self, type_id: int, target: Optional[GoType]) -> Any:
        """A value as ``Encode`` writes it: a struct's fields, else a singleton."""
        wire = self.types.get(type_id)
        if wire is not None and wire.kind == "struct":
            return self._struct(wire, target)
        if self._uint() != 0:
            raise DecodeError("gob singleton value without its zero field delta")
        return self._value(type_id, target)

    def _value(self, type_id: int, target: Optional[GoType]) -> Any:
        if target is INTERFACE and type_id != INTERFACE_ID:
            target = None  # a field declared Any takes whatever the peer sends
        kind = target.kind if target is not None else ""
        basic = _BASIC_KINDS.get(type_id)
        if basic is not None:
            if kind not in ("", basic):
                raise self._mismatch(type_id, target)  # type: ignore[arg-type]
            if type_id == INT_ID:
                return _fit_int(self._int(), target)
            if type_id == STRING_ID:
                return self._string()
            if type_id == UINT_ID:
                return _fit_int(self._uint(), target)
            if type_id == BOOL_ID:
                return self._uint() != 0
            if type_id == FLOAT_ID:
                return _fit_float(self._float(), target)
            if type_id == BYTES_ID:
                return self._bytes(self.limits.max_bin_len)
            real = self._float()  # COMPLEX_ID
            return _fit_float(complex(real, self._float()), target)
        if type_id == INTERFACE_ID:
            if target is not None and target is not INTERFACE:
                raise self._mismatch(type_id, target)
            return self._interface()
        wire = self._wire(type_id)
        if target is not None and kind != wire.kind and not (
                wire.kind == "slice" and kind == "bytes"):
            raise self._mismatch(type_id, target)
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise DecodeError(f"gob value nests deeper than {self.limits.max_depth} levels")
        try:
            if wire.kind == "struct":
                return self._struct(wire, target)
            if wire.kind == "slice":
                return self._slice(wire, target)
            if wire.kind == "map":
                return self._map(wire, target)
            if wire.kind == "array":
                return self._array(wire, target)
            return self._opaque(wire, target)
        finally:
            self.depth -= 1

    def _slice(self, wire: WireType, target: Optional[GoType]) -> Any:
        count = self._count()
        if target is BYTES:  # []uint8 sent element by element
            return bytes(self._fit_byte(wire.elem) for _ in range(count))
        elem = target.elem if isinstance(target, Slice) else None
        return [self._value(wire.elem, elem) for _ in range(count)]

    def _fit_byte(self, type_id: int) -> int:
        if type_id != UINT_ID:
            raise self._mismatch(type_id, BYTES)
        number = self._uint()
        if number > 255:
            raise DecodeError(f"gob byte value {number} out of range")
        return number

    def _array(self, wire: WireType, target: Optional[GoType]) -> Any:
        count = self._count()
        if count != wire.length:
            raise DecodeError(f"gob array of length {wire.length} holds {count} items")
        if isinstance(target, Array) and target.length != wire.length:
            raise DecodeError(f"gob array of length {wire.length} where "
                              f"{target.name} is expected")
        elem = target.elem if isinstance(target, Array) else None
        return [self._value(wire.elem, elem) for _ in range(count)]

    def _map(self, wire: WireType, target: Optional[GoType]) -> Any:
        count = self._count(2)
        key_type = target.key if isinstance(target, Map) else None
        elem_type = target.elem if isinstance(target, Map) else None
        result: dict[Any, Any] = {}
        for _ in range(count):
            key = _hashable(self._value(wire.key, key_type))
            result[key] = self._value(wire.elem, elem_type)
        return result

    def _opaque(self, wire: WireType, target: Optional[GoType]) -> Any:
        data = self._bytes(self.limits.max_bin_len)
        if isinstance(target, Opaque) and target.load is not None:
            try:
                return target.load(data)
            except (ValueError, TypeError, OverflowError) as e:
                raise DecodeError(f"bad {target.name} value: {e}") from None
        if target is None and wire.name == TIME.short_name and wire.marshaler == "gob":
            try:  # undeclared, but by far the most common GobEncoder: Go's time.Time
                return load_time(data)
            except ValueError:
                pass
        return GobEncoded(target.name if target is not None else wire.name, data)

    def _struct(self, wire: WireType, target: Optional[GoType]) -> Any:
        struct_type = target if isinstance(target, Struct) else None
        if target is not None and struct_type is None:
            raise DecodeError(f"gob type mismatch: the peer sends struct {wire.name} where "
                              f"{target.name} is expected")
        values: dict[str, Any] = {}
        fields = wire.fields
        count = len(fields)
        number = -1
        while self.pos < self.end:  # Go's decoder also ends a struct at its message's end
            delta = self._uint()
            if delta == 0:
                break
            number += delta
            if number >= count:
                raise DecodeError(f"gob field number {number} out of range")
            name, type_id = fields[number]
            declared = struct_type.field(name) if struct_type is not None else None
            try:
                values[name] = self._value(type_id, declared.type if declared else None)
            except DecodeError as e:
                if declared is None or str(e).startswith("field "):
                    raise
                raise DecodeError(f"field {struct_type.short_name}.{name}: "  # type: ignore
                                  f"{e}") from None
        if struct_type is None or struct_type.cls is None:
            return values
        return self._build(struct_type, wire, values)

    def _build(self, struct_type: Struct, wire: WireType, values: dict[str, Any]) -> Any:
        if struct_type.fields and wire.fields and not any(
                struct_type.field(name) for name, _ in wire.fields):
            raise DecodeError(f"gob type mismatch: struct {wire.name} has no field in "
                              f"common with {struct_type.short_name}")
        kwargs = {}
        for declared in struct_type.fields:
            value = values.get(declared.go_name, _MISSING)
            if value is _MISSING:
                value = zero_value(declared.type, declared.optional)
            kwargs[self.registry.init_name(struct_type, declared.attribute)] = value
        try:
            return struct_type.cls(**kwargs)  # type: ignore[misc]
        except Exception as e:
            raise DecodeError(f"cannot build {struct_type.name}: {e}") from None

    def _interface(self) -> Any:
        length = self._uint()
        if length == 0:
            return None  # a nil interface value
        if length > MAX_NAME or length > self.end - self.pos:
            raise DecodeError(f"bad gob interface type name length {length}")
        start = self.pos
        self.pos += length
        try:
            name = self.data[start:self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("gob interface type name is not UTF-8") from None
        concrete = self.registry.by_name(name)
        if concrete is None and not self.registry.keep_unknown:
            raise DecodeError(f"gob name not registered for interface: {name!r} (register "
                              "the type with msrpc.gob.register on this side)")
        type_id = self._type_sequence(True)
        self._uint()  # the value's byte count: there so a reader may skip it
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise DecodeError(f"gob value nests deeper than {self.limits.max_depth} levels")
        try:
            value = self._top(type_id, concrete)
        finally:
            self.depth -= 1
        if concrete is None and isinstance(value, dict) and \
                self._wire(type_id).kind == "struct":
            return UnknownObject(name, value)
        return value


def _fit_int(number: int, target: Optional[GoType]) -> Any:
    if not isinstance(target, Basic) or target.bits == 0:
        return number
    if not target.low <= number <= target.high:
        raise DecodeError(f"gob value {number} overflows {target.name}")
    return target.value_class(number) if target.value_class is not None else number


def _fit_float(number: Any, target: Optional[GoType]) -> Any:
    """A float or complex as the declared type: float32 and complex64 must hold it."""
    if not isinstance(target, Basic):
        return number
    if target is FLOAT32 or target is COMPLEX64:
        try:
            for part in (number.real, number.imag):
                round_float32(part)
        except OverflowError:
            raise DecodeError(f"gob value {number!r} overflows {target.name}") from None
    return target.value_class(number) if target.value_class is not None else number


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)  # an array as a map key
    try:
        hash(key)
    except TypeError:
        raise DecodeError(f"gob map key of type {type(key).__name__} cannot be a Python "
                          "dict key") from None
    return key


def decode(data: bytes, target: Optional[GoType] = None, *,
           registry: GobRegistry = default_registry,
           limits: Limits = DEFAULT_LIMITS) -> Any:
    """
    The value of one gob stream (one ``Encode`` of a fresh Go encoder).  With ``target``
    (a GoType, e.g. ``registry.struct_for(Cls)``) the value must fit that type and comes
    back as it (fields by name, as Go); without, structs come back as dicts.
    """
    try:
        return Decoder(data, registry, limits).decode(target)
    except RecursionError:
        raise DecodeError("gob value nests too deeply") from None
