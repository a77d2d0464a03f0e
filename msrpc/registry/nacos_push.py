"""
Nacos's UDP push to HTTP clients: the receiving end.

A v1 instance-list query that carries ``udpPort`` and ``clientIP`` subscribes that address
to the service (Nacos 1.x to 3.1; ``InstanceOperatorClientImpl.listInstance``).  When the
service changes, Nacos sends one datagram (``UdpPushService``, verified on 2.3.2)::

    {"type": "dom", "data": "<the ServiceInfo as a JSON string>", "lastRefTime": <nanos>}

gzip'd when it is 1 KiB or more, and waits 10 s for an acknowledgement before it sends the
datagram once more (``UdpConnector``)::

    {"type": "push-ack", "lastRefTime": <the same number>, "data": ""}

sent back to the address the push came from (the 1.x Java client's ``PushReceiver``).  Nacos
pushes only to clients whose User-Agent names a client type it knows to understand pushes
(``UdpPushService.canEnablePush``): ``USER_AGENT`` below is the Java 1.x client's, whose
protocol this is.

A datagram carries no credentials and anyone can send one, so a push is used only as a
hint: it names a service, and the registry then lists that service again over its
(authenticated, possibly TLS) HTTP connection, unless the pushed list is the one it
already has (as after subscribing: Nacos pushes the current list to a new subscriber).
Garbage is dropped with a throttled log line.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import abstract
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from msrpc import compress
from msrpc.errors import DecodeError

log = Logger()

#: The client type Nacos pushes to (any version >= 0.1.0 of it), then who we really are.
USER_AGENT = "Nacos-Java-Client:v1.4.2 msrpc"

#: A push is one datagram (at most 64 KiB); its JSON may inflate further when gzip'd.
MAX_DATAGRAM = 65535
MAX_INFLATED = 4 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
#: Types Nacos sends: "dom"/"service" carry a ServiceInfo; "dump" asks for the client cache.
SERVICE_TYPES = ("dom", "service")
#: At most one warning per this many seconds about bad datagrams (with a count).
WARN_EVERY = 10.0


@dataclass(frozen=True)
class Push:
    """One decoded push: ``name`` is Nacos's ``group@@service``."""

    kind: str
    last_ref_time: int
    name: str = ""
    clusters: str = ""
    #: The pushed instances, as Nacos sent them (unverified: a hint, never applied).
    hosts: tuple[Any, ...] = ()

    @property
    def group_and_service(self) -> tuple[str, str]:
        group, sep, service = self.name.partition("@@")
        return (group, service) if sep else ("", self.name)

    def ack(self) -> bytes:
        kind = "push-ack" if self.kind in SERVICE_TYPES else "unknown-ack"
        return json.dumps({"type": kind, "lastRefTime": self.last_ref_time,
                           "data": ""}).encode()


def parse_push(datagram: bytes) -> Push:
    """
    The push in one datagram; ``ValueError``, ``DecodeError`` or ``RecursionError`` (JSON
    nested too deep) if it is not one.
    """
    if datagram[:2] == GZIP_MAGIC:
        datagram = compress.decompress(compress.GZIP, datagram, MAX_INFLATED)
    packet = json.loads(datagram)
    if not isinstance(packet, dict) or not isinstance(packet.get("type"), str):
        raise ValueError("not a Nacos push packet")
    stamp = packet.get("lastRefTime")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, str)):
        raise ValueError("push packet without a lastRefTime")
    last_ref_time = int(stamp)
    kind = packet["type"]
    if kind not in SERVICE_TYPES:
        return Push(kind, last_ref_time)
    data = packet.get("data")
    info = json.loads(data) if isinstance(data, str) else data
    if not isinstance(info, dict) or not isinstance(info.get("name"), str) or not info["name"]:
        raise ValueError("push of a service without a name")
    clusters = info.get("clusters")
    hosts = info.get("hosts")
    return Push(kind, last_ref_time, info["name"], clusters if isinstance(clusters, str) else "",
                tuple(h for h in hosts if isinstance(h, dict)) if isinstance(hosts, list) else ())


class PushReceiver(DatagramProtocol):
    """
    Acknowledges every push and hands it to ``on_push``; never raises out of
    ``datagramReceived``.  ``drop`` (a test hook, or a firewall stand-in) sees each datagram
    first and swallows it when it returns True.
    """

    noisy = False

    def __init__(self, on_push: Callable[[Push], None], clock: IReactorTime,
                 drop: Optional[Callable[[bytes], bool]] = None) -> None:
        self.on_push = on_push
        self.clock = clock
        self.drop = drop
        self.received = 0
        self.rejected = 0
        #: Clock time of the last push taken (for latency measurements).
        self.last_received_at: Optional[float] = None
        self._unreported = 0
        self._warned_at: Optional[float] = None

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.drop is not None and self.drop(datagram):
            return
        try:
            push = parse_push(datagram)
        except (ValueError, DecodeError, RecursionError, OverflowError) as e:
            self._reject(addr, e)
            return
        self.received += 1
        self.last_received_at = self.clock.seconds()
        if self.transport is not None:
            try:
                self.transport.write(push.ack(), addr)
            except OSError as e:  # e.g. the sender's port is unreachable: Nacos will retry
                log.debug("could not acknowledge a nacos push to {addr}: {error}",
                          addr=addr, error=e)
        try:
            self.on_push(push)
        except Exception:
            log.failure("handling a nacos push failed")

    def _reject(self, addr: Any, error: BaseException) -> None:
        self.rejected += 1
        self._unreported += 1
        now = self.clock.seconds()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        log.warn("ignored {count} datagram(s) on the nacos push port that are not Nacos "
                 "pushes; latest from {addr}: {error}", count=self._unreported, addr=addr,
                 error=str(error)[:200])
        self._warned_at = now
        self._unreported = 0


def local_address_towards(ip: str, port: int) -> str:
    """
    The local address this host sends from to reach ``ip`` (what Nacos sees as our address):
    a connected UDP socket is routed by the kernel, and nothing is sent.
    """
    family = socket.AF_INET6 if abstract.isIPv6Address(ip) else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, port or 8848))
        return str(probe.getsockname()[0])


class PushListener:
    """
    The UDP port of one registry, and the ``udpPort``/``clientIP`` pair that subscribes it.
    ``host`` is the address Nacos sends to (default: our address on the route to
    ``target``, the first Nacos server); the port is bound on that address.  ``start``
    never fails: if no port can be had, push stays off and the registry just polls.
    """

    def __init__(self, reactor: Any, clock: IReactorTime, target: tuple[str, int],
                 on_push: Callable[[Push], None], port: int = 0,
                 host: Optional[str] = None) -> None:
        self.reactor = reactor
        self.target = target
        self.receiver = PushReceiver(on_push, clock)
        self.port = port
        self.host = host
        self._listening: Optional[IListeningPort] = None
        self._started: Optional[Deferred[None]] = None

    @property
    def params(self) -> dict[str, str]:
        """Query parameters that subscribe us to pushes ({} until we listen)."""
        if self._listening is None or self.host is None:
            return {}
        return {"udpPort": str(getattr(self._listening.getHost(), "port", 0)),
                "clientIP": self.host}

    @property
    def listening(self) -> bool:
        return self._listening is not None

    def start(self) -> "Deferred[None]":
        if self._started is None:
            self._started = Deferred.fromCoroutine(self._start())
        return self._started

    async def _start(self) -> None:
        if not IReactorUDP.providedBy(self.reactor):
            log.info("nacos UDP push off: this reactor cannot listen on UDP")
            return
        try:
            if not self.host:
                self.host = await self._our_address()
            self._listening = self.reactor.listenUDP(self.port, self.receiver,
                                                     interface=self.host,
                                                     maxPacketSize=MAX_DATAGRAM)
        except (OSError, CannotListenError, ValueError) as e:
            log.warn("nacos UDP push off, polling only: cannot listen on {host} port {port}: "
                     "{error}", host=self.host or "?", port=self.port, error=e)
            return
        log.info("listening for nacos pushes on {host} UDP port {port}", host=self.host,
                 port=self.params["udpPort"])

    async def _our_address(self) -> str:
        host, port = self.target
        ip = host if abstract.isIPAddress(host) or abstract.isIPv6Address(host) \
            else await self.reactor.resolve(host)
        return local_address_towards(ip, port)

    def stop(self) -> "Deferred[None]":
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        return maybeDeferred(listening.stopListening).addCallback(lambda _: None)


__all__ = ["USER_AGENT", "Push", "PushReceiver", "PushListener", "parse_push",
           "local_address_towards"]
