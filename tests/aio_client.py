"""
A plain asyncio program using the msrpc client through ``msrpc.aio`` (run by the tests as
a subprocess): ``python -m tests.aio_client REGISTRY_FILE`` prints its results as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from msrpc import aio
from msrpc.errors import BadRequest
from msrpc.registry.local import LocalRegistry


async def main(path: str) -> list[Any]:
    async with aio.Client(lambda reactor: LocalRegistry(reactor, path), timeout=10) as client:
        results: list[Any] = [await client.call("arith", "add", 1, 2)]
        results.append(await client.proxy("arith").mul(6, 7))
        results.append(await asyncio.gather(
            *[client.call("arith", "slow_add", i, 1, 0.05) for i in range(5)]))
        try:  # asyncio's own timeout cancels the call
            await asyncio.wait_for(client.call("arith", "slow_add", 1, 1, 60), 0.2)
        except asyncio.TimeoutError:
            results.append("timed out")
        try:
            await client.call("arith", "div", 1, 0)
        except BadRequest as e:
            results.append(f"BadRequest: {e.message}")
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
