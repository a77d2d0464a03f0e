"""
Connections to instances: one multiplexed ``RpcProtocol`` per address by default,
connected lazily, shared by every service served at that address, reconnected with backoff
after failures, and closed once no service lists the address any more (after its calls).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from msrpc.errors import ConnectError
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.sweep import Sweeper

log = Logger()

Key = tuple[str, int]


@dataclass(frozen=True)
class PoolSettings:
    connect_timeout: float = 5.0
    #: First reconnect delay after a failed connect; doubles per failure up to the max.
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    #: Multiplexed connections per address (calls go to the least busy one).
    connections_per_endpoint: int = 1


def _outstanding(protocol: RpcProtocol) -> int:
    return protocol.outstanding


class Endpoint:
    """
    The client's state for one address: its connection(s), connect backoff and health.
    Balancers read ``outstanding`` (calls in flight) straight off it.
    """

    __slots__ = ("pool", "key", "host", "port", "protocols", "protocol", "_connecting",
                 "failures", "retry_at", "references", "closing", "ejected_until",
                 "ejections", "strikes", "probation", "tls_required", "dialect")

    def __init__(self, pool: "Pool", host: str, port: int) -> None:
        self.pool = pool
        self.key: Key = (host, port)
        self.host = host
        self.port = port
        self.protocols: list[RpcProtocol] = []
        #: The connection to use next; None while none is connected.
        self.protocol: Optional[RpcProtocol] = None
        self._connecting: Optional[list[Deferred[RpcProtocol]]] = None
        self.failures = 0
        self.retry_at = 0.0
        self.references = 0
        self.closing = False
        #: Outlier ejection state (see msrpc.health).
        self.ejected_until = 0.0
        self.ejections = 0
        self.strikes = 0
        self.probation = False
        #: The instance advertises TLS (metadata tls=1): never talk to it in clear.
        self.tls_required = False
        #: The protocol dialect it speaks when not msrpc's own (``"msgo"``): calls then
        #: go through that dialect instead of this endpoint's connections.
        self.dialect: Optional[str] = None

    def __repr__(self) -> str:
        return f"<Endpoint {self.host}:{self.port} conns={len(self.protocols)}>"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def outstanding(self) -> int:
        protocol = self.protocol
        if protocol is None:
            return 0
        if len(self.protocols) == 1:
            return protocol.outstanding
        return sum(p.outstanding for p in self.protocols)

    def next_protocol(self) -> Optional[RpcProtocol]:
        """The connection for the next call; opens more, up to the configured count,
        while the existing ones are busy."""
        protocols = self.protocols
        if len(protocols) > 1:
            self.protocol = min(protocols, key=_outstanding)
        if (protocols and len(protocols) < self.pool.settings.connections_per_endpoint
                and self._connecting is None and self.protocol is not None
                and self.protocol.outstanding):
            self._open().addErrback(lambda f: None)
        return self.protocol

    def connect(self) -> "Deferred[RpcProtocol]":
        """A connected protocol: the current one, the pending attempt, or a new attempt."""
        if self.protocol is not None:
            return defer.succeed(self.protocol)
        return self._open()

    def _open(self) -> "Deferred[RpcProtocol]":
        if self.tls_required and not self.pool.tls:
            return defer.fail(ConnectError(
                f"{self.address} requires TLS; configure the client with a CA "
                "(Client(tls=TLSFiles(ca=...)), --tls-ca)"))
        now = self.pool.clock.seconds()
        if self.retry_at > now:
            return defer.fail(ConnectError(
                f"{self.address} is in reconnect backoff for {self.retry_at - now:.2f}s "
                f"after {self.failures} failed attempt(s)"))
        d: Deferred[RpcProtocol] = Deferred()
        if self._connecting is not None:
            self._connecting.append(d)
            return d
        self._connecting = [d]
        self.pool.open(self).addCallbacks(self._connected, self._connect_failed)
        return d

    def _connected(self, protocol: RpcProtocol) -> None:
        waiters, self._connecting = self._connecting or [], None
        self.failures = 0
        self.retry_at = 0.0
        protocol.on_lost = self._lost
        self.protocols.append(protocol)
        if self.protocol is None:
            self.protocol = protocol
        if self.closing:
            self.pool.close_when_idle(self)
        for waiter in waiters:
            waiter.callback(protocol)

    def _connect_failed(self, failure: Failure) -> None:
        waiters, self._connecting = self._connecting or [], None
        self.failures += 1
        settings = self.pool.settings
        delay = min(settings.backoff_max,
                    settings.backoff_initial * (2 ** (self.failures - 1)))
        self.retry_at = self.pool.clock.seconds() + delay * (0.5 + random.random() / 2)
        error = ConnectError(f"cannot connect to {self.address}: "
                             f"{failure.getErrorMessage()}")
        for waiter in waiters:
            waiter.errback(error)

    def _lost(self, protocol: RpcProtocol) -> None:
        if protocol in self.protocols:
            self.protocols.remove(protocol)
        if self.protocol is protocol:
            self.protocol = self.protocols[0] if self.protocols else None
        if not self.protocols and self.closing:
            self.pool.forget(self)

    def close(self) -> None:
        for protocol in list(self.protocols):
            protocol.close(self.pool.clock)


#: How a pool opens a connection: (host, port, protocol) → Deferred firing with the
#: connected protocol.  Tests swap in ``msrpc.testing.MemoryNetwork.connect``.
Connector = Callable[[str, int, RpcProtocol], "Deferred[RpcProtocol]"]


def tcp_endpoint(reactor: Any, host: str, port: int, timeout: float
                 ) -> TCP4ClientEndpoint | TCP6ClientEndpoint | HostnameEndpoint:
    """
    An address connects directly; only a name goes through ``HostnameEndpoint``.  That one
    reports a failure only when its next attempt is due (0.3 s later, even with a single
    address), so a refused connect to a dead instance would cost every call that much.
    """
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    return HostnameEndpoint(reactor, host, port, timeout=timeout)


def tcp_connector(reactor: Any, timeout: float,
                  tls: Optional[Callable[[str], Any]] = None) -> Connector:
    """Real connections: TCP (IPv4, IPv6 or a name) and optionally TLS on top."""

    def connect(host: str, port: int, protocol: RpcProtocol) -> "Deferred[RpcProtocol]":
        tcp = tcp_endpoint(reactor, host, port, timeout)
        target = tcp if tls is None else wrapClientTLS(tls(host), tcp)
        return connectProtocol(target, protocol)

    return connect


class Pool:
    """Endpoints by address.  Services reference the endpoints they list (``acquire``)."""

    def __init__(self, reactor: Any, settings: ProtocolSettings, sweeper: Sweeper,
                 pool_settings: PoolSettings = PoolSettings(),
                 connector: Optional[Connector] = None, tls: bool = False) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.protocol_settings = settings
        self.sweeper = sweeper
        self.settings = pool_settings
        self.connector = connector or tcp_connector(reactor, pool_settings.connect_timeout)
        #: Whether our connections speak TLS (an instance that requires it needs this).
        self.tls = tls
        self.endpoints: dict[Key, Endpoint] = {}
        #: Builds each connection (a client that counts calls times replies by the read
        #: that brought them: ``msrpc.observe.TimedProtocol``).
        self.protocol_factory: Callable[[ProtocolSettings, None, Sweeper], RpcProtocol] = \
            RpcProtocol

    def acquire(self, host: str, port: int, tls_required: bool = False,
                dialect: Optional[str] = None) -> Endpoint:
        """The endpoint for an address a service lists (shared between services)."""
        key = (host, port)
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            endpoint = self.endpoints[key] = Endpoint(self, host, port)
        endpoint.tls_required = tls_required
        endpoint.dialect = dialect
        endpoint.closing = False
        endpoint.references += 1
        return endpoint

    def release(self, endpoint: Endpoint) -> None:
        """A service stopped listing the address: close it once idle and unreferenced."""
        endpoint.references -= 1
        if endpoint.references <= 0:
            endpoint.closing = True
            self.close_when_idle(endpoint)

    def close_when_idle(self, endpoint: Endpoint) -> None:
        if not endpoint.closing:
            return
        if endpoint.outstanding:
            # Closed by the client after its last in-flight call on it finishes.
            return
        if endpoint.protocols:
            endpoint.close()
        else:
            self.forget(endpoint)

    def forget(self, endpoint: Endpoint) -> None:
        if self.endpoints.get(endpoint.key) is endpoint and endpoint.closing:
            del self.endpoints[endpoint.key]

    def open(self, endpoint: Endpoint) -> "Deferred[RpcProtocol]":
        protocol = self.protocol_factory(self.protocol_settings, None, self.sweeper)
        d = self.connector(endpoint.host, endpoint.port, protocol)
        # The endpoint's own timeout covers each attempt; this bounds the whole.
        d.addTimeout(self.settings.connect_timeout + 1, self.clock)
        return d

    def close(self) -> "Deferred[None]":
        """Close every connection; fires when all are gone."""
        waits = []
        for endpoint in list(self.endpoints.values()):
            endpoint.closing = True
            for protocol in list(endpoint.protocols):
                lost: Deferred[None] = Deferred()
                previous = protocol.on_lost

                def fire(p: RpcProtocol, lost: Deferred[None] = lost,
                         previous: Any = previous) -> None:
                    if previous is not None:
                        previous(p)
                    lost.callback(None)

                protocol.on_lost = fire
                waits.append(lost)
                protocol.close(self.clock)
        self.endpoints.clear()
        return defer.gatherResults(waits).addCallback(lambda _: None)
