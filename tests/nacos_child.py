"""
A separate process that registers one instance through NacosRegistry and then just lives,
beating, until it is killed: ``python -m tests.nacos_child NACOS_URL SERVICE PORT METADATA``.
It prints ``registered`` once Nacos has accepted the instance.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, task

from msrpc.registry.instance import ServiceInstance
from msrpc.registry.nacos import NacosRegistry


async def main(reactor: object, url: str, service: str, port: str, metadata: str) -> None:
    registry = NacosRegistry(reactor, url)
    await registry.register(ServiceInstance(service=service, host="127.0.0.1", port=int(port),
                                            metadata=json.loads(metadata)))
    print("registered", flush=True)
    await defer.Deferred()  # beat until killed


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, *sys.argv[1:5])))
