"""
How the ``msrpc`` command prints results (``--output``), including types JSON lacks.

``json`` (the default) prints plain JSON that people and ``jq`` read, converting what JSON
cannot hold:

==========================  =============================================================
value                       printed as
==========================  =============================================================
tuple, set, frozenset       array (sets sorted when their items compare)
bytes                       base64 string (as protobuf's JSON mapping and Go's
                            ``encoding/json`` print bytes)
datetime, date, time        ISO 8601 string (``2024-05-01T12:00:00+00:00``)
timedelta                   seconds, as a number
int and float subclasses    the number (Go's ``msrpc.gob.Int64``...); complex: ``"(1+2j)"``
UUID, Decimal               string (a Decimal keeps every digit)
registered class            object: ``"$type"`` (its registered name), then its fields
registered Enum member      its value
map with non-string keys    object whose keys are the keys' JSON text
==========================  =============================================================

``tagged`` prints the JSON serializer's exact form (``{"$bytes": ...}``, ``{"$set": ...}``),
which loses nothing and reads back through ``msrpc.codec.JsonCodec``.  ``python`` prints
the Python ``repr`` (``b'\\x00'``, ``{1, 2}``, ``shop.Order(sku='a', quantity=1)``).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import uuid
from decimal import Decimal
from typing import Any, Callable

from msrpc.codec import JsonCodec, TypeRegistry, UnknownEnum, UnknownObject, default_registry


def readable(value: Any, registry: TypeRegistry = default_registry) -> Any:
    """``value`` with everything JSON lacks converted as the module's table says."""
    cls = type(value)
    if value is None or cls in (str, int, float, bool):
        return value
    if cls in (list, tuple):
        return [readable(item, registry) for item in value]
    if cls is dict:
        return {_key(key, registry): readable(item, registry) for key, item in value.items()}
    if cls in (set, frozenset):
        items = list(value)
        try:
            items.sort()
        except TypeError:
            pass  # mixed types: keep the set's own order
        return [readable(item, registry) for item in items]
    if cls in (bytes, bytearray, memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if cls in (dt.datetime, dt.date, dt.time):
        return value.isoformat()
    if cls is dt.timedelta:
        return value.total_seconds()
    if cls in (uuid.UUID, Decimal):
        return str(value)
    if cls is UnknownObject:
        return {"$type": value.type_name, **readable(value.fields, registry)}
    if cls is UnknownEnum:
        return readable(value.value, registry)
    if isinstance(value, enum.Enum):
        return readable(value.value, registry)
    if isinstance(value, (int, float)):  # a subclass, such as Go's msrpc.gob.Int64
        return int(value) if isinstance(value, int) else float(value)
    if isinstance(value, complex):
        return str(complex(value))
    entry = registry.entry_for_type(cls)
    if entry is not None:
        return {"$type": entry.name, **readable(entry.take_apart(value), registry)}
    return repr(value)  # not something a codec decodes; never fail to show a result


def _key(key: Any, registry: TypeRegistry) -> str:
    if isinstance(key, str):
        return key
    shown = readable(key, registry)
    return shown if isinstance(shown, str) else json.dumps(shown, ensure_ascii=False)


def as_json(value: Any) -> str:
    return json.dumps(readable(value), ensure_ascii=False)


def as_tagged(value: Any) -> str:
    return json.dumps(json.loads(JsonCodec().encode(value)), ensure_ascii=False)


def as_python(value: Any) -> str:
    return repr(value)


#: ``--output`` name → how a result is printed.
OUTPUTS: dict[str, Callable[[Any], str]] = {
    "json": as_json,
    "tagged": as_tagged,
    "python": as_python,
}
