"""
A service for ``twistd --reactor=asyncio msrpc`` (and ``--reactor=uvloop``) in the tests:
its handlers use asyncio-native code (aiohttp, ``asyncio.timeout``, ``asyncio.sleep``)
beside Deferreds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet import task


class Fetch:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.cancelled = 0

    async def get(self, url: str) -> dict[str, Any]:
        """GET ``url`` with aiohttp's client (it needs a running asyncio task)."""
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                return {"status": response.status, "body": await response.text()}

    async def mixed(self) -> dict[str, Any]:
        """asyncio futures and a Deferred awaited by the same handler."""
        await asyncio.sleep(0.01)
        await task.deferLater(self.reactor, 0.01, lambda: None)
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        return {"loop": type(loop).__module__, "in_task": asyncio.current_task() is not None}

    async def hang(self) -> None:
        """Sleeps until its deadline cancels it."""
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def cancellations(self) -> int:
        return self.cancelled
