"""
Go's ``encoding/gob`` for Python: the serializer of msgo peers (wire serializer id 0)::

    from msrpc import gob

    @gob.register("*model.Goods")         # the name Go's gob.Register gave the type
    @dataclass
    class Goods:
        Id: gob.Int64 = gob.Int64(0)
        Name: str = ""

    data = gob.encode([gob.Int64(7), "x"])          # what a fresh Go encoder writes
    gob.decode(data)                                # [Int64(7), 'x']

:mod:`msrpc.gob.types` says how Python values map to Go types; :mod:`msrpc.gob.decoder`
and :mod:`msrpc.gob.encoder` read and write the stream.  ``msrpc.msgo`` builds msgo's
RPC on top.
"""

from msrpc.gob.decoder import Decoder, decode
from msrpc.gob.encoder import Encoder, encode
from msrpc.gob.types import (
    BOOL, BYTES, COMPLEX64, COMPLEX128, FLOAT32, FLOAT64, INT, INT8, INT16, INT32, INT64,
    INTERFACE, STRING, TIME, UINT, UINT8, UINT16, UINT32, UINT64, UINTPTR, Array, Basic,
    Complex64, Complex128, Field, Float32, Float64, GobEncoded, GobRegistry, GoType, Int,
    Int8, Int16, Int32, Int64, Interface, Map, Opaque, Slice, Struct, Typed, Uint, Uint8,
    Uint16, Uint32, Uint64, Uintptr, array_of, default_registry, go_type, map_of, register,
    slice_of, typed,
)

__all__ = [
    "decode", "encode", "Decoder", "Encoder", "register", "default_registry", "GobRegistry",
    "typed", "go_type", "slice_of", "array_of", "map_of", "Typed", "GobEncoded",
    "GoType", "Basic", "Interface", "Slice", "Array", "Map", "Struct", "Field", "Opaque",
    "BOOL", "INT", "INT8", "INT16", "INT32", "INT64", "UINT", "UINT8", "UINT16", "UINT32",
    "UINT64", "UINTPTR", "FLOAT32", "FLOAT64", "COMPLEX64", "COMPLEX128", "STRING",
    "BYTES", "INTERFACE", "TIME",
    "Int", "Int8", "Int16", "Int32", "Int64", "Uint", "Uint8", "Uint16", "Uint32", "Uint64",
    "Uintptr", "Float32", "Float64", "Complex64", "Complex128",
]
