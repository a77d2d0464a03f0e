"""
A Python service as a Go msgo client expects it (``tests/msgo_peer``'s ``goods`` and
``calc``), served by ``twistd msrpc`` in the end-to-end tests: Go's method names, Go's
argument types, and results declared as the Go types the Go side asserts.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from msrpc import gob
from msrpc.gob import Int64
from tests.gob_models import Goods, Result


# The Go peer's model types, in the registry twistd msrpc's server uses.
gob.register("*model.Goods", Goods)
gob.register("*model.Result", Result)


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
