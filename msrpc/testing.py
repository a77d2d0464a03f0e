"""
Test helpers shipped with msrpc, for msrpc's own tests and for its users' tests.

``MemoryNetwork`` wires real msrpc servers and clients together in memory with
``twisted.test.iosim``: every byte goes through the real protocols, but there are no
sockets and time is a ``Clock``, so tests are fast and deterministic::

    net = MemoryNetwork()
    server = net.server({"arith": Arith()}, address="10.0.0.1:7000")
    client = net.client()                     # resolves through net.registry
    d = client.call("arith", "add", 1, 2)
    net.flush()
    assert self.successResultOf(d) == 3
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim

from msrpc.client import Client
from msrpc.observe import combine
from msrpc.protocol import RpcProtocol
from msrpc.registry.instance import ServiceInstance, parse_address
from msrpc.registry.static import StaticRegistry
from msrpc.server import Dispatcher, RpcServerFactory, ServerLimits, published_metadata
from msrpc.protocol import ProtocolSettings
from msrpc.sweep import SERVER_KEEPALIVE, KeepaliveSettings, Sweeper
from msrpc.threads import ThreadSettings, Threads


class ManualThreadPool:
    """
    A stand-in for the handler thread pool, without threads: work waits until
    ``run_next``/``run_all`` runs it on the caller's thread (at once with ``immediate``),
    so tests of blocking handlers stay deterministic.  A handler may ``clock.advance``
    to let time pass while it "runs".
    """

    def __init__(self, immediate: bool = False) -> None:
        self.immediate = immediate
        self.queue: list[tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self.started = False
        self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def callInThreadWithCallback(self, onResult: Any, func: Callable[..., Any], *args: Any,
                                 **kw: Any) -> None:
        self.queue.append((onResult, func, args, kw))
        if self.immediate:
            self.run_all()

    def run_next(self) -> bool:
        """Run the oldest waiting work item; False if none waits."""
        if not self.queue:
            return False
        on_result, func, args, kw = self.queue.pop(0)
        try:
            result, ok = func(*args, **kw), True
        except BaseException:
            result, ok = Failure(), False
        if on_result is not None:
            on_result(ok, result)
        return True

    def run_all(self) -> int:
        ran = 0
        while self.run_next():
            ran += 1
        return ran


def _call_now(f: Callable[..., Any], *args: Any) -> None:
    f(*args)


class MemoryServer:
    """A server reachable at one in-memory address (a Dispatcher and its factory)."""

    def __init__(self, network: "MemoryNetwork", host: str, port: int,
                 dispatcher: Dispatcher, factory: RpcServerFactory) -> None:
        self.network = network
        self.host = host
        self.port = port
        self.dispatcher = dispatcher
        self.factory = factory
        #: Where its services are listed (the network's registry).
        self.registry = network.registry

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def crash(self) -> None:
        """Drop every connection and refuse new ones, like a killed process."""
        self.network.unlisten(self.host, self.port)
        for protocol in list(self.factory.connections):
            protocol.transport.abortConnection()  # an iosim FakeTransport
        self.network.flush()


class MemoryNetwork:
    def __init__(self, clock: Optional[Clock] = None) -> None:
        self.clock = clock or Clock()
        self.registry = StaticRegistry()
        self.pumps: list[iosim.IOPump] = []
        self._listening: dict[tuple[str, int], RpcServerFactory] = {}
        self._next_port = 7000

    # ------------------------------------------------------------------ servers

    def listen(self, host: str, port: int, factory: RpcServerFactory) -> None:
        self._listening[(host, port)] = factory

    def unlisten(self, host: str, port: int) -> None:
        self._listening.pop((host, port), None)

    def server(self, services: Mapping[str, Any], address: Optional[str] = None, *,
               limits: ServerLimits = ServerLimits(), tokens: Any = None,
               settings: Optional[ProtocolSettings] = None,
               keepalive: KeepaliveSettings = SERVER_KEEPALIVE, weight: float = 10.0,
               register: bool = True, threads: ThreadSettings = ThreadSettings(),
               thread_pool: Optional[ManualThreadPool] = None,
               observers: Sequence[Any] = ()) -> MemoryServer:
        """Serve ``services`` at ``address`` (default: a new one) and list them in
        ``self.registry``.  Blocking handlers run on ``thread_pool`` (default: a
        ``ManualThreadPool`` that runs them at once)."""
        if address is None:
            self._next_port += 1
            address = f"127.0.0.1:{self._next_port}"
        host, port = parse_address(address)
        handler_threads = Threads(_call_now, threads, thread_pool if thread_pool is not None
                                  else ManualThreadPool(immediate=True))
        handler_threads.start()
        dispatcher = Dispatcher(self.clock, limits, tokens, threads=handler_threads,
                                blocking=threads.blocking)
        for name, obj in services.items():
            dispatcher.add_service(name, obj)
        factory = RpcServerFactory(dispatcher, settings or ProtocolSettings(),
                                   Sweeper(self.clock, keepalive))
        factory.observe(combine(observers))
        self.listen(host, port, factory)
        if register:
            for name in services:
                self.registry.register(ServiceInstance(
                    name, host, port, weight=weight,
                    metadata=published_metadata(dispatcher, name, {})))
        return MemoryServer(self, host, port, dispatcher, factory)

    # ------------------------------------------------------------------ clients

    def client(self, **options: Any) -> Client:
        """A real ``Client`` whose connections are in memory and whose clock is ours."""
        options.setdefault("connector", self.connect)
        return Client(self.clock, options.pop("registry", self.registry), **options)

    def connect(self, host: str, port: int, protocol: RpcProtocol) -> "Deferred[RpcProtocol]":
        factory = self._listening.get((host, port))
        server_protocol = None
        if factory is not None:
            server_protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        if server_protocol is None:
            return defer.fail(ConnectionRefusedError(f"{host}:{port}"))
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))
        server_address = IPv4Address("TCP", host, port)
        pump = iosim.connect(
            server_protocol,
            iosim.FakeTransport(server_protocol, isServer=True, hostAddress=server_address,
                                peerAddress=client_address),
            protocol,
            iosim.FakeTransport(protocol, isServer=False, hostAddress=client_address,
                                peerAddress=server_address),
            greet=False, clock=self.clock)
        self.pumps.append(pump)
        return defer.succeed(protocol)

    # ------------------------------------------------------------------ time and bytes

    def flush(self) -> None:
        """Deliver bytes in every direction until nothing moves."""
        for _ in range(10_000):
            moved = False
            for pump in list(self.pumps):
                if pump.pump():
                    moved = True
            self.pumps = [p for p in self.pumps
                          if not (p.clientIO.disconnected and p.serverIO.disconnected)]
            if not moved:
                return
        raise AssertionError("MemoryNetwork.flush: traffic never settled")

    def advance(self, seconds: float) -> None:
        """
        Let ``seconds`` pass, stopping at every timer due on the way (so a retry scheduled
        by a timer still runs in this span) and delivering bytes after each.
        """
        clock = self.clock
        target = clock.seconds() + seconds
        self.flush()
        while True:
            due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= target]
            if not due:
                break
            clock.advance(max(0.0, min(due) - clock.seconds()))
            self.flush()
        clock.advance(max(0.0, target - clock.seconds()))
        self.flush()
