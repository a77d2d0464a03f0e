"""
baseline: bare Twisted length-prefixed msgpack echo, the limit to compare with.

Frames are C{Int32StringReceiver} strings holding C{msgpack([request_id,
obj])}; the client matches replies to one Deferred per call by that id, so
many calls share one connection and replies may come back in any order.
"""

from __future__ import annotations

from itertools import count
from typing import Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver

from bench import twisted_harness

packb = msgpack.packb
unpackb = msgpack.unpackb


class EchoServer(Int32StringReceiver):
    def stringReceived(self, data: bytes) -> None:
        request_id, obj = unpackb(data)
        self.sendString(packb([request_id, obj]))


class EchoClient(Int32StringReceiver):
    def __init__(self) -> None:
        self._ids = count()
        self._pending: dict[int, Deferred[Any]] = {}

    def call(self, obj: Any) -> Deferred[Any]:
        request_id = next(self._ids)
        d = self._pending[request_id] = Deferred()
        self.sendString(packb([request_id, obj]))
        return d

    def stringReceived(self, data: bytes) -> None:
        request_id, obj = unpackb(data)
        self._pending.pop(request_id).callback(obj)

    def connectionLost(self, reason: Any = None) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(reason)


def listen(reactor: Any, host: str, port: int) -> Deferred[int]:
    endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    d = endpoint.listen(Factory.forProtocol(EchoServer))
    return d.addCallback(lambda p: p.getHost().port)


def connect(reactor: Any, host: str, port: int) -> Deferred[Any]:
    d = connectProtocol(TCP4ClientEndpoint(reactor, host, port), EchoClient())
    return d.addCallback(lambda proto: proto.call)


serve, load = twisted_harness.entry_points(listen, connect)
