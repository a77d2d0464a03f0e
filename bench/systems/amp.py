"""
amp: Twisted AMP, one command whose bytes argument carries the msgpack body.

The client runs every call through C{AMP.callRemote} on one connection; the
responder unpacks the body into Python objects and packs the reply.
"""

from __future__ import annotations

from typing import Any

import msgpack
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from bench import twisted_harness

#: An amp.String value holds at most 65,535 bytes.
MAX_PAYLOAD = 65_000

packb = msgpack.packb
unpackb = msgpack.unpackb


class Echo(amp.Command):
    arguments = [(b"body", amp.String())]
    response = [(b"body", amp.String())]


class EchoServer(amp.AMP):
    @Echo.responder
    def echo(self, body: bytes) -> dict[str, bytes]:
        return {"body": packb(unpackb(body))}


def _reply(response: dict[str, bytes]) -> Any:
    return unpackb(response["body"])


def listen(reactor: Any, host: str, port: int) -> Deferred[int]:
    endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    d = endpoint.listen(Factory.forProtocol(EchoServer))
    return d.addCallback(lambda p: p.getHost().port)


def connect(reactor: Any, host: str, port: int) -> Deferred[Any]:
    d = connectProtocol(TCP4ClientEndpoint(reactor, host, port), amp.AMP())

    def ready(proto: amp.AMP) -> Any:
        def call(obj: Any) -> Deferred[Any]:
            return proto.callRemote(Echo, body=packb(obj)).addCallback(_reply)

        return call

    return d.addCallback(ready)


serve, load = twisted_harness.entry_points(listen, connect)
