"""
Writing a gob stream as a fresh Go ``gob.Encoder`` writes one value (what msgo sends).

The encoder follows Go's own order of work, so its output is byte for byte what Go writes
for the same value: type ids are handed out from 64 as a new Go process would (a struct
before its fields, a slice, array or map after its elements), each type definition goes
out as its own message the first time the type is needed, and an interface value that
needs a new type flushes the message being built, as Go's ``encodeInterface`` does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import struct
from typing import Any, Optional

import attr

from msrpc.codec import DEFAULT_LIMITS, Limits, UnknownObject
from msrpc.errors import EncodeError
from msrpc.gob.types import (
    BOOL, BYTES, COMPLEX64, COMPLEX128, FIRST_USER_ID, FLOAT32, FLOAT64, INT, INTERFACE,
    STRING, TIME, Array, Field, GobEncoded, GobRegistry, GoType, Map, Opaque, Slice, Struct, Typed,
    _GoComplex, _GoFloat, _GoInt, default_registry, round_float32, slice_type,
)

_pack_double = struct.Struct(">d").pack
#: Top-level types whose definitions a registry keeps (see Encoder._definitions).
_MAX_CACHED_DEFINITIONS = 256
_NUMBERS = (int, float)


def _put_uint(buffer: bytearray, value: int) -> None:
    if value < 0x80:
        buffer.append(value)
        return
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    buffer.append(256 - len(raw))
    buffer += raw


def _put_int(buffer: bytearray, value: int) -> None:
    _put_uint(buffer, (~value << 1) | 1 if value < 0 else value << 1)


def _put_float(buffer: bytearray, value: float) -> None:
    _put_uint(buffer, int.from_bytes(_pack_double(value), "little"))


def _put_bytes(buffer: bytearray, value: bytes) -> None:
    _put_uint(buffer, len(value))
    buffer += value


class Encoder:
    """Encodes one value as one self-contained gob stream; see :func:`encode`."""

    def __init__(self, registry: GobRegistry = default_registry,
                 limits: Limits = DEFAULT_LIMITS, *, first_id: int = FIRST_USER_ID) -> None:
        if first_id < FIRST_USER_ID:
            raise ValueError(f"gob type ids start at {FIRST_USER_ID}")
        self.registry = registry
        self.limits = limits
        self._ids: dict[GoType, int] = {}
        self._def_names: dict[GoType, str] = {}
        self._sent: set[GoType] = set()
        #: The next type id (a Go process that already built types starts further on).
        self._next_id = first_id
        self._writers: list[bytearray] = []
        self._depth = 0

    def encode(self, value: Any, go: Optional[GoType] = None) -> bytes:
        if go is INTERFACE:
            go = None  # Go encodes what an interface holds, never the interface itself
        if isinstance(value, Typed):
            if go is not None and go != value.type:
                raise EncodeError(f"a value typed {value.type.name} where {go.name} is "
                                  "declared")
            value, go = value.value, value.type
        if go is None:
            go = self.infer(value)
        if value is None:
            raise EncodeError("gob cannot encode nil at the top level")
        output = bytearray()
        self._writers = [output]
        buffer = bytearray()
        self._definitions(output, buffer, go)
        _put_int(buffer, self._id(go, ""))
        self._top(buffer, value, go)
        self._write_message(output, buffer)
        return bytes(output)

    # ------------------------------------------------------------------ type inference

    def infer(self, value: Any) -> GoType:
        """The Go type a Python value travels as when nothing declares one."""
        if isinstance(value, Typed):
            return value.type
        cls = type(value)
        if cls is str:
            return STRING
        if cls is int:
            return INT
        if cls is bool:
            return BOOL
        if cls is float:
            return FLOAT64
        if isinstance(value, (_GoInt, _GoFloat, _GoComplex)):
            return value.go
        if cls is complex:
            return COMPLEX128
        if cls in (bytes, bytearray, memoryview):
            return BYTES
        if cls in (list, tuple, set, frozenset):
            elems = {self.infer(item) for item in value if item is not None}
            return slice_type(elems.pop() if len(elems) == 1 and None not in value
                              else INTERFACE)
        if cls is dict:
            keys = {self.infer(k) for k in value}
            elems = {self.infer(v) for v in value.values() if v is not None}
            uniform = len(elems) == 1 and None not in value.values()
            return Map(keys.pop() if len(keys) == 1 else (STRING if not keys else INTERFACE),
                       elems.pop() if uniform else INTERFACE)
        if isinstance(value, dt.datetime):
            return TIME
        if isinstance(value, GobEncoded):
            return Opaque(value.type_name)
        if isinstance(value, UnknownObject):  # a struct kept by a keep_unknown registry
            # A field holding a named struct came in an interface: it goes in one again.
            return Struct(value.type_name, [
                Field(name, name, INTERFACE if item is None or isinstance(item, UnknownObject)
                      else self.infer(item))
                for name, item in value.fields.items()])
        if dataclasses.is_dataclass(cls) or attr.has(cls):
            return self.registry.struct_for(cls)
        raise EncodeError(f"cannot send {cls.__module__}.{cls.__qualname__} to Go: declare "
                          "its Go type (msrpc.gob.typed, or register the class)")

    # ------------------------------------------------------------------ types

    def _definitions(self, output: bytearray, buffer: bytearray, go: GoType) -> None:
        """The definitions a value of ``go`` starts with: written by a fresh encoder always
        alike, so they are kept per registry and type and copied (msgo's bodies are each
        from a fresh encoder and start with the same few definitions)."""
        if self._ids or self._sent:
            self._send_type_descriptor(output, buffer, go)
            return
        key = (go, self._next_id)
        cached = self.registry.definitions.get(key)
        if cached is None:
            start = len(output)
            self._send_type_descriptor(output, buffer, go)
            if len(self.registry.definitions) >= _MAX_CACHED_DEFINITIONS:
                self.registry.definitions.clear()
            cached = self.registry.definitions[key] = (
                bytes(output[start:]), dict(self._ids), dict(self._def_names),
                frozenset(self._sent), self._next_id)
            return
        data, ids, def_names, sent, next_id = cached
        output += data
        self._ids.update(ids)
        self._def_names.update(def_names)
        self._sent.update(sent)
        self._next_id = next_id

    def _id(self, go: GoType, name: str) -> int:
        """The id of ``go``, assigning ids as Go does the first time it builds a type."""
        wire_id = go.wire_id
        if wire_id:
            return wire_id
        found = self._ids.get(go)
        if found is not None:
            return found
        if isinstance(go, Struct):
            found = self._new_id(go, go.short_name)
            for field in go.fields:
                self._id(field.type, _field_type_name(field.type))
            return found
        if isinstance(go, Slice):
            self._id(go.elem, _named(go.elem))
        elif isinstance(go, Array):
            self._id(go.elem, "")
        elif isinstance(go, Map):
            self._id(go.key, "")
            self._id(go.elem, "")
        elif isinstance(go, Opaque):
            name = go.short_name
        return self._new_id(go, name)

    def _new_id(self, go: GoType, name: str) -> int:
        found = self._ids.get(go)  # a recursive type may have got one meanwhile
        if found is None:
            found = self._ids[go] = self._next_id
            self._def_names[go] = name
            self._next_id += 1
        return found

    def _send_type_descriptor(self, writer: bytearray, buffer: bytearray, go: GoType) -> None:
        if go not in self._sent:
            self._send_type(writer, buffer, go)

    def _send_type(self, writer: bytearray, buffer: bytearray, go: GoType) -> None:
        if go.wire_id or go in self._sent:
            return
        type_id = self._id(go, "")
        _put_int(buffer, -type_id)
        self._wire_type(buffer, go, type_id)
        self._write_message(writer, buffer)
        self._sent.add(go)
        if isinstance(go, Struct):
            for field in go.fields:
                self._send_type(writer, buffer, field.type)
        elif isinstance(go, (Slice, Array)):
            self._send_type(writer, buffer, go.elem)
        elif isinstance(go, Map):
            self._send_type(writer, buffer, go.key)
            self._send_type(writer, buffer, go.elem)

    def _wire_type(self, buffer: bytearray, go: GoType, type_id: int) -> None:
        """The definition of ``go``: a value of Go's ``wireType`` struct."""
        if isinstance(go, Array):
            which = 0
        elif isinstance(go, Slice):
            which = 1
        elif isinstance(go, Struct):
            which = 2
        elif isinstance(go, Map):
            which = 3
        else:
            assert isinstance(go, Opaque)
            which = 4 + ("gob", "binary", "text").index(go.marshaler)
        _put_uint(buffer, which + 1)
        _put_uint(buffer, 1)  # field 0 of every kind: its CommonType
        name = self._def_names.get(go, "")
        if name:
            _put_uint(buffer, 1)
            _put_bytes(buffer, name.encode("utf-8", "surrogateescape"))
            _put_uint(buffer, 1)
        else:
            _put_uint(buffer, 2)
        _put_int(buffer, type_id)
        buffer.append(0)
        if isinstance(go, (Array, Slice)):
            _put_uint(buffer, 1)
            _put_int(buffer, self._ids.get(go.elem) or go.elem.wire_id)
            if isinstance(go, Array) and go.length:
                _put_uint(buffer, 1)
                _put_int(buffer, go.length)
        elif isinstance(go, Map):
            _put_uint(buffer, 1)
            _put_int(buffer, self._ids.get(go.key) or go.key.wire_id)
            _put_uint(buffer, 1)
            _put_int(buffer, self._ids.get(go.elem) or go.elem.wire_id)
        elif isinstance(go, Struct) and go.fields:
            _put_uint(buffer, 1)
            _put_uint(buffer, len(go.fields))
            for field in go.fields:
                _put_uint(buffer, 1)
                _put_bytes(buffer, field.go_name.encode("utf-8", "surrogateescape"))
                _put_uint(buffer, 1)
                _put_int(buffer, self._ids.get(field.type) or field.type.wire_id)
                buffer.append(0)
        buffer.append(0)  # end of the kind's struct
        buffer.append(0)  # end of wireType

    def _write_message(self, writer: bytearray, buffer: bytearray) -> None:
        _put_uint(writer, len(buffer))
        writer += buffer
        buffer.clear()

    # ------------------------------------------------------------------ values

    def _top(self, buffer: bytearray, value: Any, go: GoType) -> None:
        """A value as ``Encode`` writes it: a struct's fields, else a singleton."""
        if isinstance(go, Struct):
            self._struct(buffer, value, go)
        else:
            buffer.append(0)
            self._value(buffer, value, go)

    def _value(self, buffer: bytearray, value: Any, go: GoType) -> None:
        if isinstance(value, Typed):
            if value.type != go and go is not INTERFACE:
                raise EncodeError(f"a value typed {value.type.name} where {go.name} is "
                                  "declared")
            if go is not INTERFACE:
                value = value.value
        kind = go.kind
        if kind == "string":
            if not isinstance(value, str):
                raise _wrong(value, go)
            _put_bytes(buffer, value.encode("utf-8", "surrogateescape"))
        elif kind == "int" or kind == "uint":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _wrong(value, go)
            if not go.low <= value <= go.high:  # type: ignore[attr-defined]
                raise EncodeError(f"{int(value)} is out of range for Go {go.name}")
            if kind == "int":
                _put_int(buffer, value)
            else:
                _put_uint(buffer, value)
        elif kind == "interface":
            self._interface(buffer, value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise _wrong(value, go)
            buffer.append(1 if value else 0)
        elif kind == "float":
            if not isinstance(value, _NUMBERS) or isinstance(value, bool):
                raise _wrong(value, go)
            _put_float(buffer, _float(value, go))
        elif kind == "bytes":
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise _wrong(value, go)
            _put_bytes(buffer, bytes(value))
        elif kind == "complex":
            if not isinstance(value, (complex, float, int)) or isinstance(value, bool):
                raise _wrong(value, go)
            number = complex(value)
            _put_float(buffer, _float(number.real, go))
            _put_float(buffer, _float(number.imag, go))
        elif kind == "opaque":
            _put_bytes(buffer, _marshal(value, go))  # type: ignore[arg-type]
        else:
            self._composite(buffer, value, go)

    def _composite(self, buffer: bytearray, value: Any, go: GoType) -> None:
        self._depth += 1
        if self._depth > self.limits.max_depth:
            raise EncodeError(f"value nests deeper than {self.limits.max_depth} levels")
        try:
            if isinstance(go, Struct):
                self._struct(buffer, value, go)
            elif isinstance(go, Map):
                if not isinstance(value, dict):
                    raise _wrong(value, go)
                _put_uint(buffer, len(value))
                for key, item in value.items():
                    self._value(buffer, key, go.key)
                    self._value(buffer, item, go.elem)
            elif isinstance(go, (Slice, Array)):
                if not isinstance(value, (list, tuple, set, frozenset)):
                    raise _wrong(value, go)
                if isinstance(go, Array) and len(value) != go.length:
                    raise EncodeError(f"{len(value)} items for Go {go.name}")
                _put_uint(buffer, len(value))
                for item in value:
                    self._value(buffer, item, go.elem)
            else:
                raise EncodeError(f"cannot encode Go type {go.name}")
        finally:
            self._depth -= 1

    def _struct(self, buffer: bytearray, value: Any, go: Struct) -> None:
        if go.cls is not None:
            if not isinstance(value, go.cls):
                raise _wrong(value, go)
            items = [getattr(value, field.attribute) for field in go.fields]
        elif isinstance(value, (dict, UnknownObject)):  # no class: fields by Go name
            fields = value.fields if isinstance(value, UnknownObject) else value
            items = [fields.get(field.go_name) for field in go.fields]
        else:
            raise _wrong(value, go)
        number = -1
        for index, field in enumerate(go.fields):
            item = items[index]
            if _is_zero(item, field.type):
                continue
            _put_uint(buffer, index - number)
            number = index
            try:
                self._value(buffer, item, field.type)
            except EncodeError as e:
                if str(e).startswith("field "):
                    raise
                raise EncodeError(f"field {go.short_name}.{field.go_name}: {e}") from None
        buffer.append(0)

    def _interface(self, buffer: bytearray, value: Any) -> None:
        while isinstance(value, Typed) and value.type is INTERFACE:
            value = value.value  # an interface holds a concrete value, never an interface
        if value is None:
            buffer.append(0)  # nil
            return
        if isinstance(value, Typed):
            value, go = value.value, value.type
        else:
            go = self.infer(value)
        name = self._interface_name(go)
        _put_bytes(buffer, name.encode("utf-8"))
        self._send_type_descriptor(self._writers[-1], buffer, go)
        _put_int(buffer, self._id(go, ""))
        self._writers.append(buffer)
        data = bytearray()
        self._depth += 1
        if self._depth > self.limits.max_depth:
            raise EncodeError(f"value nests deeper than {self.limits.max_depth} levels")
        try:
            self._top(data, value, go)
        finally:
            self._depth -= 1
            self._writers.pop()
        self._write_message(buffer, data)

    def _interface_name(self, go: GoType) -> str:
        if isinstance(go, Struct):
            name = self.registry.name_of(go.cls) if go.cls is not None else go.name
            if not name:
                raise EncodeError(
                    f"{go.name} is not registered with msrpc.gob.register: inside an "
                    "interface value Go needs the name its side registered")
            return name
        return go.name


def _named(go: GoType) -> str:
    """What Go's ``reflect.Type.Name()`` gives for a slice element: named types only."""
    if isinstance(go, (Struct, Opaque)):
        return go.short_name
    return ""


def _field_type_name(go: GoType) -> str:
    """The name Go gives the type of a struct field: its own, or its type string."""
    return _named(go) or go.name


def _is_zero(value: Any, go: GoType) -> bool:
    """Whether Go would leave this struct field out (zero values are not sent)."""
    if value is None:
        return not isinstance(go, Array)
    if isinstance(value, Typed):
        value = value.value
    kind = go.kind
    if kind in ("int", "uint", "float", "complex"):
        return bool(value == 0) and not isinstance(value, bool)
    if kind == "bool":
        return value is False
    if kind in ("string", "bytes", "slice"):
        try:
            return len(value) == 0
        except TypeError:
            return False
    return False  # arrays, maps (non-nil), structs, interfaces, opaque values: sent


def _float(value: float, go: GoType) -> float:
    """A float part of a ``go`` value; float32 and complex64 parts rounded as Go does."""
    number = float(value)
    if go is FLOAT32 or go is COMPLEX64:
        try:
            return round_float32(number)
        except OverflowError as e:
            raise EncodeError(str(e)) from None
    return number


def _marshal(value: Any, go: Opaque) -> bytes:
    if isinstance(value, GobEncoded):
        return value.data
    if go.dump is None:
        raise EncodeError(f"cannot marshal a {type(value).__name__} as Go {go.name}")
    try:
        return go.dump(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise EncodeError(f"cannot send {value!r} as Go {go.name}: {e}") from None


def _wrong(value: Any, go: GoType) -> EncodeError:
    return EncodeError(f"cannot send a {type(value).__name__} as Go {go.name}")


def encode(value: Any, go: Optional[GoType] = None, *,
           registry: GobRegistry = default_registry, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """
    ``value`` as one gob stream, as a fresh Go encoder writes it: with ``go`` (a GoType)
    as that type, else as the type :meth:`Encoder.infer` gives it (``typed`` values
    declare their own).
    """
    try:
        return Encoder(registry, limits).encode(value, go)
    except RecursionError:
        raise EncodeError("value nests too deeply (or contains itself)") from None
