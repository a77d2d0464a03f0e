"""The tutorial's client: asks for the stock of apples, by service name, again and again."""

from __future__ import annotations

import sys
from collections import Counter

from twisted.internet import task
from twisted.internet.defer import Deferred

from msrpc.client import Client
from msrpc.errors import MsrpcError
from msrpc.registry.etcd import EtcdRegistry

from inventory import Stock  # registered: results arrive as Stock objects


async def shop(reactor, client: Client, calls: int, interval: float) -> Counter[str]:
    """Make ``calls`` calls, one every ``interval`` seconds; count who answered."""
    answered: Counter[str] = Counter()
    for i in range(1, calls + 1):
        try:
            stock: Stock = await client.call("inventory", "stock", "apple")
        except MsrpcError as e:
            print(f"call {i}: failed: {type(e).__name__}: {e}")
            answered["failed"] += 1
        else:
            print(f"call {i}: {stock.count} apples, answered by {stock.served_by}")
            answered[stock.served_by] += 1
        await task.deferLater(reactor, interval, lambda: None)
    return answered


async def main(reactor, calls: str = "10", interval: str = "0.5") -> None:
    registry = EtcdRegistry(reactor, "http://127.0.0.1:2379")
    client = Client(reactor, registry, timeout=2.0)
    try:
        answered = await shop(reactor, client, int(calls), float(interval))
    finally:
        await client.close()
        await registry.close()
    print("answered:", ", ".join(f"{who}: {n}" for who, n in sorted(answered.items())))
    print("retries:", client.stats["retries"])


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
