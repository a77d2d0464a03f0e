"""
Python mirrors of the Go types in ``tests/msgo_peer`` (its ``model`` package and
``vectors.go``), and the value each of the peer's reference vectors holds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

from msrpc import gob
from msrpc.msgo.messages import MsRpcRequest, MsRpcResponse
from msrpc.gob import (
    COMPLEX64, FLOAT32, INT, INT8, INT64, INTERFACE, STRING, UINT8, UINT64, Complex64,
    Float32, Int8, Int16, Int32, Int64, Uint, Uint8, Uint16, Uint64, array_of, map_of,
    slice_of, typed,
)

REGISTRY = gob.GobRegistry()


@REGISTRY.register("*model.Goods")
@dataclass
class Goods:
    Id: Int64 = Int64(0)
    Name: str = ""
    Price: float = 0.0
    Tags: list[str] = field(default_factory=list)
    Added: Optional[dt.datetime] = None


@REGISTRY.register("*model.Result")
@dataclass
class Result:
    Code: int = 0
    Msg: str = ""
    Data: Any = None


@dataclass
class Point:
    X: int = 0
    Y: int = 0


@dataclass
class Node:
    Val: int = 0
    Next: Optional[Node] = None


@dataclass
class Kinds:
    B: bool = False
    I: int = 0
    I8: Int8 = Int8(0)
    U: Uint = Uint(0)
    U16: Uint16 = Uint16(0)
    F: float = 0.0
    F32: Float32 = Float32(0)
    C: complex = 0j
    S: str = ""
    Bs: bytes = b""
    L: list[int] = field(default_factory=list)
    A: Annotated[list[str], array_of(STRING, 2)] = field(default_factory=lambda: ["", ""])
    M: Optional[dict[str, int]] = None
    P: Point = field(default_factory=Point)
    PP: Optional[Point] = None
    Any: Any = None
    T: Optional[dt.datetime] = None


def struct(cls: type) -> gob.Struct:
    return REGISTRY.struct_for(cls)


UTC = dt.timezone.utc
ANYS = slice_of(INTERFACE)

#: vector name → (the Python value, the Go type to decode it as; None: as it comes).
VECTORS: dict[str, tuple[Any, Optional[gob.GoType]]] = {
    "int": (7, None),
    "int_negative": (-129, None),
    "int64_max": (Int64(2**63 - 1), INT64),
    "int64_min": (Int64(-2**63), INT64),
    "int8": (Int8(-128), INT8),
    "uint64_max": (Uint64(2**64 - 1), UINT64),
    "uint8": (Uint8(255), UINT8),
    "float64": (17.0, None),
    "float64_small": (1e-300, None),
    "float64_negative_zero": (-0.0, None),
    "float32": (Float32(0.1), FLOAT32),
    "complex128": (1 - 2j, None),
    "complex64": (Complex64(0.1 + 3j), COMPLEX64),
    "bool": (True, None),
    "string": ("héllo, 世界", None),
    "string_empty": ("", None),
    "bytes": (b"\x00\x01\xff", None),
    "ints": ([1, -2, 300], None),
    "strings": (["a", ""], None),
    "int64s_empty": ([], slice_of(INT64)),
    "array": ([1, 2, 3], array_of(INT, 3)),
    "map": ({"a": 1}, None),
    "map_int_strings": ({3: ["x", "y"]}, None),
    "point": (Point(22, 33), struct(Point)),
    "point_zero": (Point(), struct(Point)),
    "nodes": (Node(1, Node(2, Node(3))), struct(Node)),
    "kinds_zero": (Kinds(), struct(Kinds)),
    "kinds": (Kinds(B=True, I=-1, I8=Int8(8), U=Uint(9), U16=Uint16(65535), F=2.5,
                    F32=Float32(1.25), C=1j, S="s", Bs=b"b", L=[0], A=["", "z"],
                    M={"": 0}, P=Point(1, 0), PP=Point(0, 2), Any=Int32(5),
                    T=dt.datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC)), struct(Kinds)),
    "time_utc": (dt.datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC), None),
    "time_tokyo": (dt.datetime(2024, 1, 2, 3, 4, 5,
                               tzinfo=dt.timezone(dt.timedelta(hours=9))), None),
    "time_odd_offset": (dt.datetime(1900, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(
        -dt.timedelta(hours=3, minutes=30, seconds=15))), None),
    "interfaces": ([1, "x", Int64(2), None, [1], 2.5, Uint8(3), b"b"], ANYS),
    "interface_struct": ([Goods(Id=Int64(7), Name="g", Tags=["t"])], ANYS),
    "interface_nested": ([typed([Goods(Id=Int64(1))], ANYS),
                          Result(Code=200, Data=Goods(Id=Int64(2), Added=dt.datetime(
                              2020, 1, 1, tzinfo=UTC)))], ANYS),
    "interface_map": ({"k": typed([{"n": 1}], ANYS)}, map_of(STRING, INTERFACE)),
    "request": (MsRpcRequest(RequestId=Int64(1), ServiceName="goods", MethodName="Save",
                             Args=[Goods(Id=Int64(3), Name="n", Price=1.5)]),
                struct(MsRpcRequest)),
    "response": (MsRpcResponse(RequestId=Int64(9), Code=Int16(200), Data=Result(
        Code=200, Msg="success", Data=Goods(Id=Int64(9), Name="goods-9"))),
        struct(MsRpcResponse)),
}


def untyped(value: Any) -> Any:
    """What a value decodes to: ``typed`` wrappers are how it was sent, not what it is."""
    if isinstance(value, gob.Typed):
        return untyped(value.value)
    if isinstance(value, list):
        return [untyped(item) for item in value]
    if isinstance(value, dict):
        return {key: untyped(item) for key, item in value.items()}
    return value
