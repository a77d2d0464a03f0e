"""
Connection and write limits of a real ``twistd msrpc`` process, seen from outside: its
open descriptors (``/proc/<pid>/fd``) under a flood of silent connections, and what its
log says when a peer stops reading its replies.  Loopback only, bounded loops.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from msrpc.client import Client, RetryPolicy
from msrpc.codec import make_codecs
from msrpc.errors import Unavailable
from msrpc.overflow import DEFAULT_SLOTS
from msrpc.registry.static import StaticRegistry
from msrpc.wire import REQUEST, Serializer, encode_frame
from tests.servers import run, under_ci, wait_for
from tests.servers.msrpcd import MsrpcDaemon, start_daemon, workdir

LIMIT = 20
FLOOD = 200
#: Twisted's listen backlog: one accept batch can take this many (plus one) at once.
BACKLOG = 50
WHOAMI = "whoami=tests.e2e_service:Whoami"


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect_silently(port: int, count: int) -> list[socket.socket]:
    """``count`` non-blocking connections that never send a byte."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    return socks


async def flood(port: int, count: int, socks: list[socket.socket]) -> None:
    """``count`` silent connections, 10 every 50 ms (all at once, most SYNs would be
    dropped by the kernel's full listen queue and never reach the server)."""
    while count > 0:
        socks.extend(connect_silently(port, min(10, count)))
        count -= 10
        await sleep(0.05)


def closed_by_server(sock: socket.socket) -> bool:
    """The server closed this connection (EOF or reset); False while open or connecting."""
    try:
        return sock.recv(65536) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as e:
        return e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class ProcessLimitTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            if under_ci():
                raise AssertionError("these tests count descriptors in /proc (Linux)")
            raise SkipTest("counts descriptors in /proc (Linux only)")
        self.dir = workdir(self)

    async def daemon(self, *args: str) -> MsrpcDaemon:
        return await start_daemon(self, reactor, self.dir,
                                  ["--registry", "static", "--service", WHOAMI,
                                   "--grace", "0", *args])

    @run
    async def test_connection_flood_is_bounded_and_over_limit_sockets_close_quickly(
            self) -> None:
        daemon = await self.daemon("--max-connections", str(LIMIT))
        baseline = open_descriptors(daemon.pid)
        socks: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in socks])
        flooding = defer.Deferred.fromCoroutine(flood(daemon.port or 0, FLOOD, socks))
        client = Client(reactor, StaticRegistry({"whoami": [daemon.address]}),
                        retry=RetryPolicy(max_attempts=1), timeout=5.0)
        self.addCleanup(client.close)
        peak = 0
        for i in range(80):  # 4 s, sampled every 50 ms
            if i == 20:
                call = client.call("whoami", "pid")  # a caller in the crowd: 503
            peak = max(peak, open_descriptors(daemon.pid) - baseline)
            await sleep(0.05)
        await flooding
        with self.assertRaises(Unavailable):
            await call
        self.assertLessEqual(peak, LIMIT + DEFAULT_SLOTS + BACKLOG + 5,
                             f"peak of {peak} descriptors over the baseline")
        # The kernel hands over the rest as their handshakes are retried; each is closed
        # within a second, and only the silent ones under the limit stay (idle timeout).
        await wait_for(reactor, lambda: open_descriptors(daemon.pid) <= baseline + LIMIT,
                       10.0, "the server back to its limit")
        self.assertGreater(sum(map(closed_by_server, socks)), BACKLOG)
        self.assertIn("connection limit (20) reached", daemon.log_text())

    @run
    async def test_peer_not_reading_its_replies_is_closed_by_the_write_timeout(
            self) -> None:
        daemon = await self.daemon("--frame-timeout", "1", "--write-timeout", "3")
        baseline = open_descriptors(daemon.pid)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        self.addCleanup(sock.close)
        sock.connect(("127.0.0.1", daemon.port or 0))
        codec = make_codecs()[int(Serializer.MSGPACK)]
        body = codec.encode({"service": "whoami", "method": "blob", "args": [65536]})
        requests = b"".join(encode_frame(REQUEST, 1, int(Serializer.MSGPACK), rid, body)
                            for rid in range(1, 101))
        # 100 calls for 6.4 MB of replies, then half a frame: the server reads it all
        # at once, its replies pile up unread, it stops reading from us.
        sock.sendall(requests + requests[:20])
        started = reactor.seconds()
        await sleep(2.0)  # twice the frame timeout: still open
        self.assertNotIn("closing connection", daemon.log_text())
        await wait_for(reactor, lambda: "closing connection" in daemon.log_text(), 10.0,
                       "the write timeout")
        took = reactor.seconds() - started
        log = daemon.log_text()
        self.assertIn("peer stopped reading its replies for 3", log)
        self.assertNotIn("a frame stayed incomplete", log)
        self.assertGreaterEqual(took, 3.0)
        self.assertLess(took, 3.0 + 5.0)  # two sweeps of 0.25 s, and a busy machine
        await wait_for(reactor, lambda: open_descriptors(daemon.pid) <= baseline, 5.0,
                       "the slow reader's descriptor released")

    @run
    async def test_slow_but_steady_reader_keeps_its_connection(self) -> None:
        daemon = await self.daemon("--frame-timeout", "1", "--write-timeout", "2")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(sock.close)
        sock.connect(("127.0.0.1", daemon.port or 0))
        sock.setblocking(False)
        codec = make_codecs()[int(Serializer.MSGPACK)]
        body = codec.encode({"service": "whoami", "method": "blob", "args": [65536]})
        frame = encode_frame(REQUEST, 1, int(Serializer.MSGPACK), 1, body)
        received = 0
        for _ in range(20):  # 4 s: each 64 KiB reply fills the buffer; read 0.2 s later
            sock.sendall(frame)
            await sleep(0.2)
            received += _drain(sock)
        self.assertNotIn("closing connection", daemon.log_text())
        self.assertGreater(received, 15 * 65536)


def _drain(sock: socket.socket) -> int:
    """Read whatever is there without blocking; the number of bytes."""
    total = 0
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return total
        if not chunk:
            return total
        total += len(chunk)
