"""
baseline: bare Twisted length-prefixed msgpack echo, the limit to compare with.

Frames are C{Int32StringReceiver} strings holding C{msgpack([request_id,
obj])}; the client matches replies to one Deferred per call by that id, so
many calls share one connection and replies may come back in any order.

With compression on (C{bench.run --compression}), a frame is one flag byte and
then the msgpack, gzip- or zstd-compressed (same levels as msrpc) when it is at
least C{COMPRESSION_THRESHOLD} bytes: the least a bare protocol would do.
"""

from __future__ import annotations

import zlib
from itertools import count
from typing import Any, Callable

import msgpack
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int32StringReceiver

from bench import twisted_harness, workload

COMPRESSIONS = workload.COMPRESSIONS
#: Int32StringReceiver refuses strings over 99,999 bytes by default.
MAX_FRAME = 16 * 1024 * 1024

packb: Callable[[Any], bytes] = msgpack.packb
unpackb: Callable[[Any], Any] = msgpack.unpackb


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def _gunzip(data: Any) -> bytes:
    return zlib.decompress(data, 31)


def _compressing(compress: Callable[[bytes], bytes],
                 decompress: Callable[[Any], bytes]) -> tuple[Callable[[Any], bytes],
                                                            Callable[[bytes], Any]]:
    threshold = workload.COMPRESSION_THRESHOLD

    def encode(obj: Any) -> bytes:
        data = msgpack.packb(obj)
        if len(data) < threshold:
            return b"\0" + data
        return b"\1" + compress(data)

    def decode(frame: bytes) -> Any:
        body = memoryview(frame)[1:]
        return msgpack.unpackb(decompress(body) if frame[0] else body)

    return encode, decode


def use_compression(kind: str) -> None:
    """Switch this process's framing to ``kind`` (none keeps the plain frames)."""
    global packb, unpackb
    if kind == "none":
        packb, unpackb = msgpack.packb, msgpack.unpackb
    elif kind == "gzip":
        packb, unpackb = _compressing(_gzip, _gunzip)
    elif kind == "zstd":
        import zstandard

        packb, unpackb = _compressing(zstandard.ZstdCompressor(level=3).compress,
                                      zstandard.ZstdDecompressor().decompress)
    else:
        raise ValueError(f"unknown compression {kind!r}")


class _NoDelay(Int32StringReceiver):
    """TCP_NODELAY, as msrpc (and grpc) set it: with Nagle on, the last segment of a
    frame longer than the MSS waits for the peer's delayed ACK (up to 40 ms on Linux)."""

    MAX_LENGTH = MAX_FRAME

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)  # None in percall
        if set_no_delay is not None:
            set_no_delay(True)


class EchoServer(_NoDelay):
    def stringReceived(self, data: bytes) -> None:
        request_id, obj = unpackb(data)
        self.sendString(packb([request_id, obj]))


class WorkingEchoServer(EchoServer):
    """The echo after a fixed amount of work (``bench.workers --work-kib``)."""

    work = staticmethod(workload.worker(0))

    def stringReceived(self, data: bytes) -> None:
        request_id, obj = unpackb(data)
        self.work()
        self.sendString(packb([request_id, obj]))


class EchoClient(_NoDelay):
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
    use_compression(workload.compression())
    endpoint: Any = TCP4ServerEndpoint(reactor, port, interface=host)
    if workload.REUSE_PORT:  # one of several processes on one port (bench.workers)
        from msrpc.workers import WorkerEndpoint

        endpoint = WorkerEndpoint(reactor, {"socket": "reuseport", "family": 2,
                                            "host": host, "port": port, "backlog": 128})
    server: type[EchoServer] = EchoServer
    if workload.work_kib():
        server = WorkingEchoServer
        WorkingEchoServer.work = staticmethod(workload.worker(workload.work_kib()))
    d = endpoint.listen(Factory.forProtocol(server))
    return d.addCallback(lambda p: p.getHost().port)


def connect(reactor: Any, host: str, port: int) -> Deferred[Any]:
    use_compression(workload.compression())
    d = connectProtocol(TCP4ClientEndpoint(reactor, host, port), EchoClient())
    return d.addCallback(lambda proto: proto.call)


serve, load = twisted_harness.entry_points(listen, connect)
