"""Large payloads over real loopback sockets: many megabyte calls in flight both ways."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from msrpc import compress
from msrpc.client import Client, RetryPolicy
from msrpc.pool import tcp_connector
from msrpc.protocol import ProtocolSettings
from msrpc.registry.static import StaticRegistry
from msrpc.server import Server
from msrpc.tls import TLSFiles
from tests.servers.tls import make_pki

MIB = 1024 * 1024


class Echo:
    def echo(self, value: Any) -> Any:
        return value


class LargePayloadTests(TestCase):
    @defer.inlineCallbacks
    def call_many(self, calls: int, payload: Any, compression: str = "none",
                  tls: bool = False, connector: Any = None):  # type: ignore[no-untyped-def]
        server_tls = client_tls = None
        if tls:
            directory = Path(tempfile.mkdtemp(prefix="msrpc-payload-"))
            self.addCleanup(shutil.rmtree, directory, True)
            pki = make_pki(directory)
            server_tls = TLSFiles(None, pki.server_cert, pki.server_key)
            client_tls = TLSFiles(pki.ca)
        registry = StaticRegistry()
        server = Server(reactor, "tcp:0:interface=127.0.0.1", registry=registry,
                        services={"echo": Echo()}, grace=0, tls=server_tls,
                        settings=ProtocolSettings(
                            compression=compress.parse_name(compression)))
        server.startService()
        self.addCleanup(server.stopService)
        yield server.ready
        client = Client(reactor, registry, timeout=30.0, compression=compression,
                        retry=RetryPolicy(max_attempts=1), tls=client_tls,
                        connector=connector)
        self.addCleanup(client.close)
        echo = client.proxy("echo").echo
        self.server = server
        replies = yield defer.gatherResults([echo([i, payload]) for i in range(calls)],
                                            consumeErrors=True)
        self.assertEqual([reply[0] for reply in replies], list(range(calls)))
        for reply in replies:
            self.assertEqual(reply[1], payload)

    def test_megabyte_calls_in_flight_both_ways_all_complete(self) -> None:
        # Both ends' send buffers fill at once: neither may stop reading while its own
        # writes wait (that deadlocked clients before they stopped pausing their reads).
        return self.call_many(16, bytes(range(256)) * (MIB // 256))

    def test_megabyte_strings_in_flight_all_complete(self) -> None:
        return self.call_many(8, "msrpc payload é " * (MIB // 16))

    def test_megabyte_calls_compressed_with_gzip(self) -> None:
        return self.call_many(8, b"compressible " * (MIB // 13), compression="gzip")

    def test_megabyte_calls_compressed_with_zstd(self) -> None:
        return self.call_many(8, b"compressible " * (MIB // 13), compression="zstd")

    def test_megabyte_calls_over_tls(self) -> None:
        return self.call_many(4, bytes(range(256)) * (MIB // 256), tls=True)

    @defer.inlineCallbacks
    def test_both_ends_send_without_waiting_for_acks(self):  # type: ignore[no-untyped-def]
        # TCP_NODELAY: with Nagle, the tail of a frame longer than the MSS would wait for
        # the peer's delayed ACK (up to 40 ms a call on Linux).
        client_side: list[Any] = []
        connect = tcp_connector(reactor, 5.0)

        def connector(host: str, port: int, protocol: Any) -> Any:
            client_side.append(protocol)
            return connect(host, port, protocol)

        yield self.call_many(1, b"x", connector=connector)
        [server_side] = self.server.factory.connections
        self.assertEqual(len(client_side), 1)
        for protocol in client_side + [server_side]:
            handle = protocol.transport.getHandle()
            self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
