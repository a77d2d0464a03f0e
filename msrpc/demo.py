"""The built-in demo services, served when ``twistd msrpc`` is given no ``--service``."""

from __future__ import annotations

from typing import Any

from twisted.internet import task

from msrpc.errors import BadRequest
from msrpc.service import expose


class Echo:
    """Returns what it is given: the smallest round trip, used by the benchmarks."""

    @expose(idempotent=True)
    def echo(self, value: Any) -> Any:
        return value

    @expose(idempotent=True)
    def ping(self) -> str:
        return "pong"


class Arith:
    """Integer arithmetic, sync and async, with a typed signature the server checks."""

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock

    @expose(idempotent=True)
    def add(self, a: int, b: int) -> int:
        return a + b

    @expose(idempotent=True)
    def mul(self, a: int, b: int) -> int:
        return a * b

    def div(self, a: int, b: int) -> float:
        if b == 0:
            raise BadRequest("division by zero")
        return a / b

    async def slow_add(self, a: int, b: int, delay: float = 0.1) -> int:
        """``add`` after ``delay`` seconds: shows async handlers, deadlines and draining."""
        if self._clock is None:
            from twisted.internet import reactor as clock
        else:
            clock = self._clock
        await task.deferLater(clock, delay, lambda: None)
        return a + b


def default_services(clock: Any = None) -> dict[str, Any]:
    return {"echo": Echo(), "arith": Arith(clock)}
