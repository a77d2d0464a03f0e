"""
Calling Go msgo services: msgo's exchange, one call per connection.

For an instance that speaks msgo the client opens a new connection per call (as msgo's
own client does), sends ``MsRpcRequest`` (gob, gzip), reads ``MsRpcResponse`` and closes.
The connection is an ordinary :class:`msrpc.protocol.RpcProtocol` whose serializer is
gob and whose compression is always gzip; what differs is only that it carries one call.

msgo answers code 200, 500 (its errors: the method's ``error``, "no service found", an
undecodable request) and 700 (rate limited, safe to retry elsewhere); msrpc raises
``RemoteError`` and ``RateLimited`` for them.  When a method does not exist, or an
argument is not of the Go type the method takes, msgo panics and closes the connection
without a word: that becomes :class:`msrpc.errors.MsgoDropped`, which names both causes
and the Go types that were sent.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from msrpc import compress
from msrpc.codec import DEFAULT_LIMITS, Limits
from msrpc.errors import ConnectError, ConnectionLost, MsgoDropped, MsrpcError
from msrpc.gob import GobRegistry, default_registry
from msrpc.gob.encoder import Encoder
from msrpc.msgo.messages import GOB, MsgoClientCodec
from msrpc.pool import Connector, Endpoint
from msrpc.protocol import PendingCall, ProtocolSettings, RpcProtocol


class MsgoDialect:
    """The client side of msgo for one ``Client``: connects a fresh exchange per call."""

    def __init__(self, clock: Any, connector: Connector, connect_timeout: float,
                 registry: Optional[GobRegistry] = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.clock = clock
        self.connector = connector
        self.connect_timeout = connect_timeout
        self.registry = registry = registry or default_registry
        self.settings = ProtocolSettings(
            codecs={GOB: MsgoClientCodec(registry, limits)}, serializer=GOB,
            compression=compress.GZIP, compression_threshold=0)
        self.exchanges: set[MsgoExchange] = set()

    def connect(self, endpoint: Endpoint) -> "Deferred[MsgoExchange]":
        """A new connection to ``endpoint``, ready for one call."""
        protocol = RpcProtocol(self.settings)
        exchange = MsgoExchange(self, protocol, endpoint)
        connecting = self.connector(endpoint.host, endpoint.port, protocol)
        connecting.addTimeout(self.connect_timeout, self.clock)

        def connected(_: Any) -> MsgoExchange:
            self.exchanges.add(exchange)
            protocol.on_lost = exchange.lost
            return exchange

        def failed(failure: Failure) -> Failure:
            raise ConnectError(f"cannot connect to {endpoint.address}: "
                               f"{failure.getErrorMessage()}")

        return connecting.addCallbacks(connected, failed)

    def close(self) -> None:
        """Drop every exchange still open (their calls fail with ConnectionLost)."""
        for exchange in list(self.exchanges):
            exchange.protocol.abort()


class MsgoExchange:
    """
    One msgo call on its own connection.  The client sends the call through it and may
    forget it (timeout, cancel); the protocol reports the answer to it, and it closes the
    connection before passing the answer on.
    """

    def __init__(self, dialect: MsgoDialect, protocol: RpcProtocol, endpoint: Endpoint) -> None:
        self.dialect = dialect
        self.protocol = protocol
        self.endpoint = endpoint
        self.call: Any = None
        # What the protocol reads of a pending call: the client's call's.
        self.service = self.method = ""
        self.args: Any = ()
        self.kwargs: Any = None
        self.meta: Any = None

    @property
    def read_at(self) -> float:
        """When the read that brought the reply began (0.0: not timed)."""
        return self.protocol.read_at

    def send_call(self, call: PendingCall) -> int:
        self.call = call
        self.service, self.method = call.service, call.method
        self.args, self.kwargs, self.meta = call.args, call.kwargs, call.meta
        try:
            return self.protocol.send_call(self)
        except Exception:
            self.protocol.abort()
            raise

    def forget(self, rid: int, tell_peer: bool = True) -> Any:
        """The client gave up on the call: drop the connection (msgo has no cancel)."""
        self.protocol.forget(rid, tell_peer=False)
        self.protocol.abort()

    def succeeded(self, data: Any) -> None:
        self.protocol.close(self.dialect.clock)
        self.call.succeeded(data)

    def failed(self, error: MsrpcError) -> None:
        if isinstance(error, ConnectionLost) and not isinstance(error, MsgoDropped):
            error = self._dropped()
        self.protocol.close(self.dialect.clock)
        self.call.failed(error)

    def lost(self, protocol: RpcProtocol) -> None:
        self.dialect.exchanges.discard(self)

    def _dropped(self) -> MsgoDropped:
        try:
            encoder = Encoder(self.dialect.registry)
            sent = ", ".join(encoder.infer(arg).name for arg in self.call.args) or "none"
        except Exception:
            sent = "?"
        return MsgoDropped(
            f"{self.endpoint.address} closed the connection without answering "
            f"{self.call.service}.{self.call.method}: msgo does that when the method does "
            f"not exist or an argument is not of the Go type the method takes (sent: "
            f"{sent}; see msrpc.gob for sending int64, uint8, float32, structs...)")
