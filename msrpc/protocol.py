"""
``RpcProtocol``: the one protocol class both sides use.

It turns bytes into frames and frames into events: responses are matched to pending calls
by request id (any order, many in flight), requests go to a dispatcher (servers only),
pings are answered with pongs.  Policy (retries, balancing, limits) lives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol as TypingProtocol

from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from msrpc import compress
from msrpc.codec import Codec, make_codecs
from msrpc.errors import (
    ConnectionLost, DecodeError, EncodeError, FrameError, MsrpcError, error_from_code,
)
from msrpc.wire import (
    CANCEL, DEFAULT_MAX_FRAME, HEADER, HEADER_SIZE, MAGIC, PING, PONG, REQUEST, RESPONSE,
    VERSION, FrameParser, Serializer, encode_frame,
)

if TYPE_CHECKING:
    from msrpc.sweep import Sweeper

_pack_header = HEADER.pack
_NONE = compress.NONE
_MSGPACK = int(Serializer.MSGPACK)
#: Bodies this long are written apart from their header instead of concatenated with it:
#: Twisted's transport joins its pending writes once anyway, and with several replies
#: pending a concatenated 1 MiB body would be copied twice.
WRITE_APART = 16 * 1024


@dataclass
class ProtocolSettings:
    """What both sides agree on per connection: codecs, compression, size limits."""

    codecs: dict[int, Codec] = field(default_factory=make_codecs)
    serializer: int = _MSGPACK
    compression: int = _NONE
    compression_threshold: int = compress.DEFAULT_THRESHOLD
    max_frame: int = DEFAULT_MAX_FRAME
    max_decompressed: int = compress.DEFAULT_MAX_DECOMPRESSED
    #: TCP_NODELAY: send a frame's last segment at once instead of holding it until the
    #: peer acknowledges the previous one (Nagle), which the peer delays by up to 40 ms.
    #: Replies are already written once per read, so small frames are not sent one by one.
    no_delay: bool = True

    def __post_init__(self) -> None:
        if self.serializer not in self.codecs:
            raise ValueError(f"no codec for serializer {self.serializer}")
        if not compress.available(self.compression):
            raise ValueError(f"compression {self.compression} is not available")


class PendingCall(TypingProtocol):
    """What the protocol needs of a client call (``msrpc.client.Call`` provides it)."""

    service: str
    method: str
    args: Any
    kwargs: Any
    meta: Any

    def succeeded(self, data: Any) -> None: ...

    def failed(self, error: MsrpcError) -> None: ...


class Dispatcher(TypingProtocol):
    """What the protocol needs of a server (``msrpc.server.Dispatcher`` provides it)."""

    def request_received(self, protocol: "RpcProtocol", rid: int, compression: int,
                         serializer: int, body: bytes) -> None: ...

    def cancel_received(self, protocol: "RpcProtocol", rid: int) -> None: ...

    def connection_lost(self, protocol: "RpcProtocol") -> None: ...


@implementer(IPushProducer, IHandshakeListener)
class RpcProtocol(Protocol):
    log = Logger()
    #: A TCP or TLS transport: a consumer/producer that can also abort.
    transport: Any

    def __init__(self, settings: ProtocolSettings, dispatcher: Optional[Dispatcher] = None,
                 sweeper: Optional["Sweeper"] = None) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.sweeper = sweeper
        # Hot-path copies of the settings (attribute chains cost on every frame).
        self._codecs = settings.codecs
        self._codec = settings.codecs[settings.serializer]
        self._serializer = settings.serializer
        self._compression = settings.compression
        self._threshold = settings.compression_threshold
        self._write: Callable[[bytes], None] = _not_connected
        self._parser = FrameParser(self._frame_received, settings.max_frame)
        self._pending: dict[int, PendingCall] = {}
        self._next_rid = 1
        self.connected = False
        self.peer = "?"
        #: Incremented on every read, so a sweep can see activity without reading a clock.
        self.rx_count = 0
        #: Server side: requests being handled for this connection (rid → state).
        self.server_calls: dict[int, Any] = {}
        #: Called once with this protocol when the connection is gone.
        self.on_lost: Optional[Callable[["RpcProtocol"], None]] = None
        self._paused = False
        #: Incremented each time back-pressure pauses reading (the sweep's write timeout).
        self.pauses = 0
        self._handshaking = False
        self._abort_timer: Any = None

    # ------------------------------------------------------------------ connection events

    def connectionMade(self) -> None:
        self.connected = True
        self._write = self.transport.write
        if self.settings.no_delay:
            set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                try:
                    set_no_delay(True)
                except OSError:
                    pass  # not TCP (a Unix socket): nothing to delay
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}".rstrip(":")
        # Back-pressure: when what we wrote piles up unread, the transport pauses us.  A
        # server then stops reading that peer's requests until it drains (memory stays
        # bounded); a client only notes it (the sweep's write timeout) and keeps reading:
        # replies are what frees its memory, and were both ends to stop reading while
        # their writes piled up (large calls in flight both ways), neither would drain.
        # Over TLS only once the handshake is done: until then the TLS layer buffers our
        # first writes and asks us to pause, and to stop reading would stall it.
        if ISSLTransport.providedBy(self.transport):
            self._handshaking = True
        else:
            self.transport.registerProducer(self, True)
        if self.sweeper is not None:
            self.sweeper.add(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = False
        self._write = _not_connected
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        if self.sweeper is not None:
            self.sweeper.remove(self)
        pending, self._pending = self._pending, {}
        if pending:
            why = reason.getErrorMessage() if reason is not None else "connection closed"
            for call in pending.values():
                call.failed(ConnectionLost(
                    f"connection to {self.peer} lost with the call in flight ({why})"))
        if self.dispatcher is not None:
            self.dispatcher.connection_lost(self)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost(self)

    def dataReceived(self, data: bytes) -> None:
        self.rx_count += 1
        # Everything written while handling one read (replies, pongs, and calls made from
        # reply callbacks) goes to the transport as one write: a transport write costs far
        # more than a list append.
        batch: list[bytes] = []
        self._write = batch.append
        try:
            self._parser.feed(data)
        except FrameError as e:
            self.log.warn("closing connection from {peer}: {error}", peer=self.peer, error=e)
            self.abort()
        finally:
            if self.connected:
                self._write = write = self.transport.write
                if batch:
                    if len(batch) == 1:
                        write(batch[0])
                    elif self._apart:
                        self._apart = False
                        self.transport.writeSequence(batch)  # joined once, by the transport
                    else:
                        write(b"".join(batch))
            else:
                self._write = _not_connected

    def abort(self) -> None:
        """Drop the connection at once (the stream can no longer be trusted)."""
        if self.transport is not None:
            self.transport.abortConnection()

    def close(self, clock: Any, grace: float = 2.0) -> None:
        """
        Close after what is written has been sent; abort if the peer has not let go within
        ``grace`` seconds (a dead host, or a TLS peer that never answers close_notify).
        """
        if not self.connected or self._abort_timer is not None:
            return
        self.transport.loseConnection()
        self._abort_timer = clock.callLater(grace, self.abort)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS is up, back-pressure may pause reading from now on."""
        self._handshaking = False
        if self.connected:
            self.transport.registerProducer(self, True)

    # ------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:
        if not self._paused and self.connected:
            self._paused = True
            self.pauses += 1
            if self.dispatcher is not None:  # servers stop reading; clients read on
                self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused and self.connected:
            self._paused = False
            if self.dispatcher is not None:
                self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass

    @property
    def paused(self) -> bool:
        return self._paused

    # ------------------------------------------------------------------ frames in

    def _frame_received(self, mtype: int, comp: int, ser: int, rid: int, body: bytes) -> None:
        if mtype == RESPONSE:
            call = self._pending.pop(rid, None)
            if call is None:
                if rid != 0 or len(self._pending) != 1:
                    return  # the call already timed out or was cancelled
                # msgo answers some errors ("no service found") with request id 0: with
                # one call in flight (msgo's one call per connection) it is that call's.
                _, call = self._pending.popitem()
            try:
                if comp == _NONE:
                    payload = self._codecs[ser].decode(body)
                else:
                    payload = self.decode_body(comp, ser, body)
                code = payload["code"]
            except (DecodeError, KeyError, TypeError, IndexError) as e:
                call.failed(DecodeError(f"undecodable response from {self.peer}: {e}"))
                return
            if code == 200:
                call.succeeded(payload.get("data"))
            else:
                call.failed(error_from_code(code, str(payload.get("msg", "")),
                                            payload.get("details")))
        elif mtype == REQUEST:
            if self.dispatcher is None:
                self.reply(rid, ser, 404, msg="this peer serves no calls")
            else:
                self.dispatcher.request_received(self, rid, comp, ser, body)
        elif mtype == PING:
            self._write(encode_frame(PONG, _NONE, ser, rid))
        elif mtype == PONG:
            pass  # rx_count already recorded the sign of life
        elif mtype == CANCEL:
            if self.dispatcher is not None:
                self.dispatcher.cancel_received(self, rid)
        else:
            raise FrameError(f"unknown message type {mtype}")

    def decode_body(self, comp: int, ser: int, body: bytes) -> Any:
        codec = self._codecs.get(ser)
        if codec is None:
            raise DecodeError(f"unsupported serializer id {ser}")
        if comp != _NONE:
            body = compress.decompress(comp, body, self.settings.max_decompressed)
        return codec.decode(body)

    # ------------------------------------------------------------------ frames out

    #: A body was written apart from its header since the last batched read.
    _apart = False
    #: When the read being handled began (``msrpc.observe.TimedProtocol`` sets it; 0.0
    #: on connections that do not time their reads).
    read_at = 0.0

    def _send_response(self, ser: int, rid: int, code: int, data: bytes) -> int:
        """Write the response to ``rid`` (``code`` is in ``data``; observed connections
        read it here); returns the frame's size."""
        comp = _NONE
        size = len(data)
        if self._compression != _NONE and size >= self._threshold:
            comp = self._compression
            data = compress.compress(comp, data)
            size = len(data)
        header = _pack_header(MAGIC, VERSION, HEADER_SIZE + size, RESPONSE, comp, ser, rid)
        if size < WRITE_APART:
            self._write(header + data)
        else:
            self._write_apart(header, data)
        return HEADER_SIZE + size

    def _write_apart(self, header: bytes, body: bytes) -> None:
        """A large body is written as it is, after its header (no copy here)."""
        self._apart = True
        self._write(header)
        self._write(body)

    def send_call(self, call: PendingCall) -> int:
        """Send a request and remember ``call`` until its response; raises EncodeError."""
        body: dict[str, Any] = {"service": call.service, "method": call.method,
                                "args": call.args}
        if call.kwargs:
            body["kwargs"] = call.kwargs
        if call.meta:
            body["meta"] = call.meta
        data = self._codec.encode(body)
        rid = self._next_rid
        self._next_rid = rid + 1
        comp = _NONE
        size = len(data)
        if self._compression != _NONE and size >= self._threshold:
            comp = self._compression
            data = compress.compress(comp, data)
            size = len(data)
        header = _pack_header(MAGIC, VERSION, HEADER_SIZE + size, REQUEST, comp,
                              self._serializer, rid)
        if size < WRITE_APART:
            self._write(header + data)
        else:
            self._write_apart(header, data)
        self._pending[rid] = call
        return rid

    def forget(self, rid: int, tell_peer: bool = True) -> Optional[PendingCall]:
        """Stop waiting for ``rid`` (timeout, cancel); optionally ask the server to stop."""
        call = self._pending.pop(rid, None)
        if call is not None and tell_peer and self.connected:
            self._write(encode_frame(CANCEL, _NONE, self.settings.serializer, rid))
        return call

    @property
    def outstanding(self) -> int:
        """Calls sent on this connection and not yet answered."""
        return len(self._pending)

    def send_response_frame(self, rid: int, code: int, frame: bytes) -> int:
        """Write the response to ``rid`` built elsewhere, whole (a dialect's, see
        ``msrpc.msgo.server``); observed connections read ``code`` here.  Returns the
        frame's size."""
        self._write(frame)
        return len(frame)

    def send_ping(self) -> None:
        self._write(encode_frame(PING, _NONE, self.settings.serializer, 0))

    def reply_ok(self, rid: int, ser: int, codec: Any, data: Any) -> None:
        """The success reply of the server's hot path: ``codec`` is the one the request
        was decoded with, and only a result that cannot be encoded takes ``reply``."""
        try:
            body = codec.encode({"code": 200, "data": data})  # success: no "msg" (wire.rst)
        except EncodeError:
            self.reply(rid, ser, 200, data)
            return
        self._send_response(ser, rid, 200, body)

    def reply(self, rid: int, ser: int, code: int, data: Any = None, msg: str = "",
              details: Any = None) -> None:
        """Send a response; a result that cannot be encoded becomes a 500 instead."""
        if not self.connected:
            return
        codec = self._codecs.get(ser)
        if codec is None:
            ser, codec = self._serializer, self._codec
        payload: dict[str, Any] = ({"code": code, "data": data} if code == 200 and not msg
                                   else {"code": code, "msg": msg, "data": data})
        if details is not None:
            payload["details"] = details
        try:
            body = codec.encode(payload)
        except EncodeError as e:
            code = 500
            body = codec.encode({"code": code, "msg": f"result could not be encoded: {e}",
                                 "data": None, "details": {"type": "EncodeError"}})
        self._send_response(ser, rid, code, body)

    #: A reply to a request that was not run (limits, auth, undecodable, unknown method):
    #: the same as ``reply``; observed server connections count these as refusals.
    refuse = reply

    def reply_counted(self, rid: int, ser: int, codec: Any, data: Any, tally: Any,
                      started: float, request: bytes) -> None:
        """``reply_ok`` for a server that counts calls (metrics): ``tally`` is where the
        success goes, ``started`` when the request arrived, ``request`` its body (whose
        size is counted).  Counting connections (``msrpc.observe.ObservedProtocol``)
        count it; others, made before counting began, just reply."""
        self.reply_ok(rid, ser, codec, data)

    def note_counted(self, rid: int, tally: Any, started: float, size: int) -> None:
        """A counting server's request ``rid`` is not answered at once (refused after
        its method was known, failed, or running): counting connections keep it until
        its response (see ``reply_counted``)."""

    def call_identified(self, rid: int, service: str, method: str, meta: Any,
                        started: float, size: int) -> None:
        """The dispatcher found the method request ``rid`` names (told only when the
        server is observed; ``msrpc.observe.ObservedProtocol`` records it)."""

    def call_cancelled(self, rid: int) -> None:
        """The caller cancelled request ``rid``: no response will be written (told only
        when the server is observed)."""


def _not_connected(data: bytes) -> None:
    """Writes after the connection is gone are dropped (the peer can no longer read)."""
