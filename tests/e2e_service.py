"""
User services for the end-to-end tests, served by a real ``twistd msrpc``:
``--service whoami=tests.e2e_service:Whoami`` says which process answered, greets, fails
on request, sends large replies on request and sleeps (an in-flight call to drain);
``--service relay=tests.e2e_service:Relay`` calls another service through the shared
client (a second hop).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import deferLater

from msrpc.service import expose


class Whoami:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    @expose(idempotent=True)
    def pid(self) -> int:
        """The id of the serving process, so a caller can tell instances apart."""
        return os.getpid()

    def greet(self, name: str) -> str:
        return f"hello, {name}"

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def blob(self, size: int) -> bytes:
        """``size`` bytes: a small request with a large reply (back-pressure tests)."""
        return b"x" * size

    def sleep(self, seconds: float) -> Any:
        """Answers ``seconds`` later: a call still in flight when a stop begins."""
        return deferLater(self.reactor, seconds, lambda: seconds)


class Relay:
    def __init__(self, client: Any) -> None:
        self.client = client

    async def relay(self, service: str, method: str, *args: Any) -> Any:
        return await self.client.call(service, method, *args)
