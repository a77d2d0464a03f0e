"""
A Python service as a Go msgo client expects it (``tests/msgo_peer``'s ``goods`` and
``calc``), served by ``twistd msrpc`` in the end-to-end tests: Go's method names, Go's
argument types, and results declared as the Go types the Go side asserts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Optional

from msrpc import gob
from msrpc.gob import Int64


@gob.register("*model.Goods")
@dataclass
class Goods:
    Id: Int64 = Int64(0)
    Name: str = ""
    Price: float = 0.0
    Tags: list[str] = field(default_factory=list)
    Added: Optional[dt.datetime] = None


@gob.register("*model.Result")
@dataclass
class Result:
    Code: int = 0
    Msg: str = ""
    Data: Any = None


class GoodsService:
    def Find(self, id: Int64) -> Result:
        return Result(200, "success", Goods(id, f"py-goods-{id}", 9.5, ["py"],
                                            dt.datetime(2024, 5, 6, tzinfo=dt.timezone.utc)))

    def Save(self, goods: Goods) -> str:
        return f"{goods.Name}@{goods.Id}+{len(goods.Tags)}"


class CalcService:
    def Add(self, a: int, b: int) -> int:
        return a + b

    def Div(self, a: int, b: int) -> int:
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return a // b

    def Echo(self, value: Any) -> Any:
        return value
