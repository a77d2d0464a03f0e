"""
Watching calls without standing in their way: the small contract that metrics, tracing
and the access log implement (grpc's interceptors and prometheus_client's integrations
are the models).

Servers and clients notify observers only when some are installed.  With none, a
server's request costs one ``if`` and a client call nothing at all: the server builds
``ObservedProtocol`` connections and the client makes ``ObservedCall`` objects only
when observing.  Each observer lives in its own module and imports its optional library
itself; nothing here imports one.

- ``ICallObserver``: a call starts (its service, method and meta are known) and finishes
  (code, duration, sizes), on either side.
- ``ICallTallies``: only counts calls (metrics), never sees one: the server and client
  record each outcome into a ``Tally`` per method, a success for the price of a list
  append, and the observer folds them in batches.
- ``ICallContext``: carries context in the request meta (trace context), told the meta
  only: a server with nothing else keeps its plain connections, and a client its plain
  calls.
- ``IClientObserver``: what the shared client does on its own (retries, ejections).
- ``IRegistryObserver``: what registries report about themselves (errors, watch
  reconnects), through their ``events`` (``RegistryEvents``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Protocol as TypingProtocol, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from msrpc.errors import EncodeError
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.wire import HEADER_SIZE

SERVER = "server"
CLIENT = "client"
#: The label of a service or method that is not served (a 404) or not yet known (a call
#: refused before its request was decoded): callers choose names, labels must stay few.
OTHER = "other"
#: The code of a call that ended without an answer: the caller cancelled it or hung up.
CANCELLED = "cancelled"
#: Why a server answered a request without running its handler, by the code it answered.
REFUSAL_REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found",
                   408: "deadline_exceeded", 503: "overloaded", 700: "rate_limited"}

log = Logger()


class CallInfo(TypingProtocol):
    """What observers read about one call (``ServerCall`` or the client's ``Call``)."""

    side: str
    service: str
    method: str
    #: The request's meta map: received (server) or about to be sent (client; observers
    #: may add to it in ``call_started``).  May be None on the server.
    meta: Any
    #: The other end: the caller's address (server) or the instance's (client).
    peer: str
    #: Clock seconds when the request arrived (server) or the call began (client).
    started: float
    #: The wire code (200, 404, ...) or, client side, the class name of a client-side
    #: failure (``ConnectError``...), or ``CANCELLED``.
    code: int | str
    duration: float
    #: Frame sizes, header included (server side; 0 on the client).
    bytes_in: int
    bytes_out: int
    #: Why the server answered without running the handler (``REFUSAL_REASONS``), or "".
    refused: str
    #: Free for one observer that needs state from start to finish (tracing's span).
    span: Any


class ICallObserver(Interface):
    """Told about every call of a server or a client."""

    contextual = Attribute(
        "True when call_started sets context variables the server's handler must see "
        "(trace context); the server then runs each request in a copy of the context.")

    def call_started(call: CallInfo) -> None:
        """Server: the request names a served method, whose handler runs next.  Client:
        the call is about to be sent; ``call.meta`` may still be added to."""

    def call_finished(call: CallInfo) -> None:
        """The call has its outcome (``code``, ``duration``, sizes).  Server calls refused
        before their request was decoded get here without ``call_started``."""


class ICallTallies(Interface):
    """Counts calls (metrics) without being told of each: cheaper than an
    ``ICallObserver`` by the per-call object and the two calls it saves."""

    def tally(side: str, service: str, method: str) -> "Tally":
        """The tally the calls of ``service.method`` on ``side`` are recorded in (asked
        once per method by each connection or client; the same object every time).
        ``service`` and ``method`` are ``OTHER`` for requests refused before their
        method was known."""


class ICallContext(Interface):
    """Carries context from call to call in the request meta (W3C trace context):
    cheaper than an ``ICallObserver`` when the meta is all that matters."""

    def outgoing(meta: dict[str, Any]) -> None:
        """Client: a call is about to be sent; add to its ``meta``."""

    def incoming(meta: Any) -> None:
        """Server: a request naming a served method arrived, with this ``meta`` (None
        when it has none, anything a peer sent otherwise); called in the request's own
        copy of the context before its handler runs, so context variables set here are
        what the handler sees.  Called for every such request: it should cost little
        when the meta carries nothing for it."""


class Tally:
    """
    The outcomes of one method's calls on one side, recorded for an ``ICallTallies``
    observer, which subclasses it.  A client's success costs an append to ``durations``
    (seconds); a server counts the successes answered in one read together, when the
    read ends (``add_many``: by default their durations appended and their frame bytes,
    header included, added to ``received`` and ``sent``); any other outcome goes through
    ``record``.  When ``durations`` holds ``limit`` entries, the recorder calls ``fold``.

    Recording happens on the reactor thread; ``fold`` may also run on another (a scrape
    from prometheus_client's own HTTP server), so it must take only the entries it
    found and leave any appended meanwhile.
    """

    __slots__ = ("durations", "received", "sent", "fold_at")

    #: ``fold`` is called once ``durations`` holds this many.
    limit = 1024

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.received = 0
        self.sent = 0
        #: ``limit``, as a slot: the hot paths read it at the cost of one.
        self.fold_at = self.limit

    def add(self, duration: float, received: int = 0, sent: int = 0) -> None:
        """A success (what the hot paths do inline)."""
        durations = self.durations
        durations.append(duration)
        self.received += received
        self.sent += sent
        if len(durations) >= self.fold_at:
            self.fold()

    def add_many(self, duration: float, n: int, received: int, sent: int) -> None:
        """``n`` successes that took ``duration`` each (those of one server read), and
        their frame bytes in all.  A subclass may count them at once."""
        durations = self.durations
        durations += [duration] * n
        self.received += received
        self.sent += sent
        if len(durations) >= self.fold_at:
            self.fold()

    def record(self, code: int | str, duration: float, received: int = 0, sent: int = 0,
               refused: str = "") -> None:
        """Any outcome, a success included (``refused`` as in ``CallInfo``)."""
        raise NotImplementedError

    def fold(self) -> None:
        """Take the successes in ``durations`` into the totals."""
        raise NotImplementedError


class IClientObserver(Interface):
    """Told what a client decides by itself."""

    def call_retried(service: str, method: str, error: BaseException) -> None:
        """A failed attempt is retried on another instance."""

    def instance_ejected(service: str, address: str, seconds: float) -> None:
        """An instance of ``service`` is taken out of rotation for ``seconds``."""


class IRegistryObserver(Interface):
    """Told what registries report about themselves."""

    def registry_error(backend: str, operation: str, error: BaseException) -> None:
        """``operation`` (lookup, register, deregister, keepalive, watch) failed."""

    def watch_reconnected(backend: str, service: str) -> None:
        """A watch of ``service`` works again after its stream or polls were interrupted."""


class RegistryEvents:
    """
    A registry's reports about itself, handed to whoever subscribes.  Every backend has
    one as ``registry.events``; reporting costs a loop over no observers when nobody
    listens, and it only happens on failures and reconnects.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.observers: list[IRegistryObserver] = []

    def subscribe(self, observer: IRegistryObserver) -> None:
        if observer not in self.observers:
            self.observers.append(observer)

    def error(self, operation: str, error: BaseException) -> None:
        for observer in self.observers:
            observer.registry_error(self.backend, operation, error)

    def watch_reconnected(self, service: str) -> None:
        for observer in self.observers:
            observer.watch_reconnected(self.backend, service)


def registry_events(registry: Any) -> Optional[RegistryEvents]:
    """The ``events`` of a registry, if it reports any (every msrpc backend does)."""
    events = getattr(registry, "events", None)
    return events if isinstance(events, RegistryEvents) else None


# --------------------------------------------------------------------------- combining


@implementer(ICallObserver, IClientObserver, IRegistryObserver)
class Observers:
    """
    Several observers as one, and what a server or client must do for them, worked
    out once: ``calls`` to tell of each call (None, the lone ``ICallObserver`` itself,
    or this object telling them all), ``tallies`` to count in, ``incoming`` and
    ``outgoing`` to carry context with.  Each observer is told only what its interfaces
    cover.
    """

    def __init__(self, observers: Iterable[Any]) -> None:
        self.all = list(observers)
        self._calls = [o for o in self.all if ICallObserver.providedBy(o)]
        tallies = [o for o in self.all if ICallTallies.providedBy(o)]
        #: The one source of tallies recorded on the hot path; any further one is told
        #: of each call instead (correct, only not as cheap).
        self.tallies: Optional[ICallTallies] = tallies[0] if tallies else None
        self._calls += [_TallyObserver(t) for t in tallies[1:]]
        self._contexts = [o for o in self.all if ICallContext.providedBy(o)]
        self._clients = [o for o in self.all if IClientObserver.providedBy(o)]
        self._registries = [o for o in self.all if IRegistryObserver.providedBy(o)]
        #: Each request must run in its own copy of the context (``Dispatcher.observe``).
        self.contextual = bool(self._contexts) or any(
            getattr(o, "contextual", False) for o in self._calls)
        self.calls: Optional[ICallObserver] = (
            None if not self._calls else self._calls[0] if len(self._calls) == 1 else self)
        #: Server connections must follow each call (``ObservedProtocol``): someone is
        #: told of calls or counts them, not only carries context.
        self.follows_calls = self.calls is not None or self.tallies is not None
        contexts = self._contexts
        self.incoming: Optional[Callable[[Any], None]] = (
            None if not contexts else contexts[0].incoming if len(contexts) == 1
            else self._incoming_all)
        self.outgoing: Optional[Callable[[dict[str, Any]], None]] = (
            None if not contexts else contexts[0].outgoing if len(contexts) == 1
            else self._outgoing_all)
        #: service → method → its tally, per side: asked of ``tallies`` once each (two
        #: subscripts of known strings cost less than building a key).
        self.server_tallies: dict[str, dict[str, Tally]] = {}
        self.client_tallies: dict[str, dict[str, Tally]] = {}

    def tally(self, side: str, service: str, method: str) -> Optional[Tally]:
        """Where calls of ``service.method`` on ``side`` are counted (None: nowhere)."""
        if self.tallies is None:
            return None
        known = (self.server_tallies if side == SERVER else
                 self.client_tallies).setdefault(service, {})
        found = known.get(method)
        if found is None:
            found = known[method] = self.tallies.tally(side, service, method)
        return found

    def call_started(self, call: CallInfo) -> None:
        for observer in self._calls:
            observer.call_started(call)

    def call_finished(self, call: CallInfo) -> None:
        for observer in self._calls:
            try:
                observer.call_finished(call)
            except Exception:
                log.failure("observer {observer!r} failed", observer=observer)

    def _incoming_all(self, meta: Any) -> None:
        for context in self._contexts:
            context.incoming(meta)

    def _outgoing_all(self, meta: dict[str, Any]) -> None:
        for context in self._contexts:
            context.outgoing(meta)

    def call_retried(self, service: str, method: str, error: BaseException) -> None:
        for observer in self._clients:
            observer.call_retried(service, method, error)

    def instance_ejected(self, service: str, address: str, seconds: float) -> None:
        for observer in self._clients:
            observer.instance_ejected(service, address, seconds)

    def registry_error(self, backend: str, operation: str, error: BaseException) -> None:
        for observer in self._registries:
            observer.registry_error(backend, operation, error)

    def watch_reconnected(self, backend: str, service: str) -> None:
        for observer in self._registries:
            observer.watch_reconnected(backend, service)


@implementer(ICallObserver)
class _TallyObserver:
    """A second ``ICallTallies`` source of one server or client, told call by call."""

    contextual = False

    def __init__(self, source: ICallTallies) -> None:
        self.source = source

    def call_started(self, call: CallInfo) -> None:
        pass

    def call_finished(self, call: CallInfo) -> None:
        self.source.tally(call.side, call.service, call.method).record(
            call.code, call.duration, call.bytes_in, call.bytes_out, call.refused)


def combine(observers: Sequence[Any]) -> Optional[Observers]:
    """What to tell ``observers`` (see ``Observers``), or None when there are none."""
    return Observers(observers) if observers else None


def client_events(observers: Optional[Observers]) -> Optional[IClientObserver]:
    """Who wants to hear about retries and ejections, or None when nobody does."""
    return observers if observers is not None and observers._clients else None


# --------------------------------------------------------------------------- server side


class ServerCall:
    """One request as a server's observers see it (``CallInfo``)."""

    __slots__ = ("peer", "service", "method", "meta", "started", "bytes_in", "refused",
                 "span", "code", "duration", "bytes_out", "tally")

    side = SERVER

    def __init__(self, peer: str, service: str, method: str, meta: Any, started: float,
                 bytes_in: int, tally: Optional[Tally] = None) -> None:
        self.peer = peer
        self.service = service
        self.method = method
        self.meta = meta
        self.started = started
        self.bytes_in = bytes_in
        self.refused = ""
        self.span: Any = None
        #: Where the outcome is counted too, when the server also has tallies.
        self.tally = tally
        # Set when the call ends:
        self.code: int | str
        self.duration: float
        self.bytes_out: int


#: The plain connection's response writer, which the observed one wraps (a global: the
#: cheapest way to reach it on the hot path).
_send_response = RpcProtocol._send_response


class ObservedProtocol(RpcProtocol):
    """
    A server connection whose calls are observed.  The dispatcher tells it once it knows
    the method a request names; the response written for it (or a cancel, or the
    connection's end) closes the call.  A request refused before that (limits, auth,
    undecodable, unknown method) is closed as ``other``/``other``, with its size unknown
    (0).

    With per-call observers (``ICallObserver``) a call is a ``ServerCall`` they are
    told of (``call_identified``).  With tallies only (metrics) a sync handler's success
    comes with its tally (``reply_counted``) and nothing is kept for it; only calls not
    answered at once are noted (``note_counted``).  A success answered while its
    request's read is handled is timed with that read: the responses of one read are
    written together once it has been handled, so each took from the start of the read
    to that write (one clock read per read, not one per call).
    """

    # Slots, not the instance dict: a dict past 30 keys (RpcProtocol's and these) loses
    # CPython's shared-key layout, and every ``self.x`` of the connection's hot path
    # gets slower (1 µs a call; see bench.instructions).
    __slots__ = ("observer", "_seconds", "_started", "_finished", "_tallies",
                 "_tally_only", "observed", "_refused", "_reading", "_read_tally",
                 "_read_start", "_read_n", "_read_in", "_read_out", "_read_others")

    def __init__(self, settings: ProtocolSettings, dispatcher: Any, sweeper: Any,
                 observer: Observers, clock: IReactorTime) -> None:
        super().__init__(settings, dispatcher, sweeper)
        self.observer = observer
        self._seconds = clock.seconds
        calls = observer.calls
        self._started = calls.call_started if calls is not None else None
        self._finished = calls.call_finished if calls is not None else None
        self._tallies = observer.tallies
        #: Calls are only counted: each is a tuple.
        self._tally_only = calls is None and self._tallies is not None
        #: request id → the call waiting for its response (a ``ServerCall``, or a tuple
        #: (tally, arrival time, request frame bytes)).
        self.observed: dict[int, Any] = {}
        #: Why requests kept as tuples were refused (rare, so not in the tuple).
        self._refused: dict[int, str] = {}
        #: A read is being handled (tallies only).  The successes answered for its
        #: requests are counted when it ends, as running totals (no per-call memory):
        #: those of ``_read_tally`` (the method answered last) in ``_read_n`` calls,
        #: ``_read_in`` request body bytes and ``_read_out`` response frame bytes, and
        #: those of methods answered before it in the read in ``_read_others``, as
        #: (tally, calls, body bytes, frame bytes).  ``_read_start``: the first one's
        #: arrival (the read's start, as the dispatcher saw it).
        self._reading = False
        self._read_tally: Optional[Tally] = None
        self._read_start = 0.0
        self._read_n = self._read_in = self._read_out = 0
        self._read_others: list[tuple[Tally, int, int, int]] = []

    def dataReceived(self, data: bytes) -> None:
        if not self._tally_only:
            RpcProtocol.dataReceived(self, data)
            return
        self._reading = True
        try:
            RpcProtocol.dataReceived(self, data)  # writes this read's responses
        finally:
            self._reading = False
            if self._read_tally is not None:
                self._count_read(self._seconds())

    def call_identified(self, rid: int, service: str, method: str, meta: Any,
                        started: float, size: int) -> None:
        self._open(rid, service, method, meta, started, HEADER_SIZE + size)

    def note_counted(self, rid: int, tally: Any, started: float, size: int) -> None:
        self.observed[rid] = (tally, started, HEADER_SIZE + size)

    def reply_counted(self, rid: int, ser: int, codec: Any, data: Any, tally: Any,
                      started: float, request: bytes) -> None:
        """A sync handler's success on a server with metrics (the hot path): written as
        ``reply_ok`` writes it, and counted with the read it answers (the request's
        size is taken then, with the others')."""
        try:
            body = codec.encode({"code": 200, "data": data})
        except EncodeError:
            self.note_counted(rid, tally, started, len(request))
            self.reply(rid, ser, 200, data)
            return
        sent = _send_response(self, ser, rid, 200, body)
        if tally is self._read_tally:  # counted and timed with the read
            self._read_n += 1
            self._read_in += len(request)
            self._read_out += sent
        else:
            self._count_apart(tally, started, len(request), sent)

    def _count_apart(self, tally: Tally, started: float, size: int, sent: int) -> None:
        """A success that is not of the method the read answered last: the read's
        first, one of another method, or one answered outside a read."""
        if not self._reading:
            tally.add(self._seconds() - started, HEADER_SIZE + size, sent)
            return
        if self._read_tally is None:
            self._read_start = started
        else:
            self._read_others.append((self._read_tally, self._read_n, self._read_in,
                                      self._read_out))
        self._read_tally = tally
        self._read_n, self._read_in, self._read_out = 1, size, sent

    def _count_read(self, ended: float) -> None:
        """Count the successes answered in the read that ended (its responses written)
        at ``ended``: each took from the read's start until then."""
        duration = ended - self._read_start
        last: Any = self._read_tally
        self._read_tally = None
        n = self._read_n
        last.add_many(duration, n, HEADER_SIZE * n + self._read_in, self._read_out)
        if self._read_others:
            for tally, n, size, sent in self._read_others:
                tally.add_many(duration, n, HEADER_SIZE * n + size, sent)
            self._read_others.clear()

    def _tally(self, service: str, method: str) -> Optional[Tally]:
        return self.observer.tally(SERVER, service, method)

    def _open(self, rid: int, service: str, method: str, meta: Any, started: float,
              bytes_in: int, starts: bool = True) -> Any:
        """Follow request ``rid`` until its response (None: nothing follows calls);
        observers hear it started unless it was refused before its method was known."""
        if self._started is None:
            if self._tallies is None:
                return None
            call: Any = (self._tally(service, method), started, bytes_in)
            self.observed[rid] = call
            return call
        call = self.observed[rid] = ServerCall(self.peer, service, method, meta, started,
                                               bytes_in, self._tally(service, method))
        if starts:
            self._started(call)
        return call

    def refuse(self, rid: int, ser: int, code: int, data: Any = None, msg: str = "",
               details: Any = None) -> None:
        self.note_refusal(rid, code)
        self.reply(rid, ser, code, data, msg, details)

    def note_refusal(self, rid: int, code: int) -> None:
        """Why request ``rid`` is refused (a dialect refusing in its own framing, such as
        ``msrpc.msgo.server``, notes it here too)."""
        call = self.observed.get(rid)
        if call is None:  # refused before its method was known
            call = self._open(rid, OTHER, OTHER, None, self._seconds(), 0, starts=False)
            if call is None:
                return
        draining = code == 503 and getattr(self.dispatcher, "draining", False)
        reason = "draining" if draining else REFUSAL_REASONS.get(code, str(code))
        if type(call) is tuple:
            self._refused[rid] = reason
        else:
            call.refused = reason

    def _send_response(self, ser: int, rid: int, code: int, body: bytes) -> int:
        size = _send_response(self, ser, rid, code, body)
        self._answered(rid, code, size)
        return size

    def send_response_frame(self, rid: int, code: int, frame: bytes) -> int:
        size = RpcProtocol.send_response_frame(self, rid, code, frame)
        self._answered(rid, code, size)
        return size

    def _answered(self, rid: int, code: int, size: int) -> None:
        call = self.observed.pop(rid, None)
        if call is not None:
            self._ended(rid, call, code, size)

    def _ended(self, rid: int, call: Any, code: int | str, size: int) -> None:
        """Any call but a tallied success has its outcome."""
        now = self._seconds()
        if type(call) is tuple:
            tally, started, received = call
            if code == 200:
                tally.add(now - started, received, size)
            else:
                tally.record(code, now - started, received, size, self._refused.pop(rid, ""))
            return
        call.code = code
        call.bytes_out = size
        call.duration = now - call.started
        if call.tally is not None:
            call.tally.record(code, call.duration, call.bytes_in, size, call.refused)
        self._finished(call)  # type: ignore[misc]  # a ServerCall: observers are set

    def call_cancelled(self, rid: int) -> None:
        self._unanswered(rid)  # the server answers a cancelled call with nothing

    def _unanswered(self, rid: int) -> None:
        call = self.observed.pop(rid, None)
        if call is not None:
            self._ended(rid, call, CANCELLED, 0)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        for rid in list(self.observed):
            self._unanswered(rid)  # running calls whose caller hung up


class TimedProtocol(RpcProtocol):
    """
    A client connection that notes when each read began (``read_at``), for a client
    that counts calls: a reply is timed from the read that brought it, one clock read
    per read instead of one per call.
    """

    __slots__ = ("_seconds", "read_at")

    def __init__(self, settings: ProtocolSettings, dispatcher: Any, sweeper: Any,
                 clock: IReactorTime) -> None:
        super().__init__(settings, dispatcher, sweeper)
        self._seconds = clock.seconds
        self.read_at = 0.0

    def dataReceived(self, data: bytes) -> None:
        self.read_at = self._seconds()
        RpcProtocol.dataReceived(self, data)


def observed_protocol(settings: ProtocolSettings, dispatcher: Any, sweeper: Any,
                      observer: Observers, clock: IReactorTime) -> ObservedProtocol:
    """The observed server connection ``observer`` needs (it follows calls)."""
    return ObservedProtocol(settings, dispatcher, sweeper, observer, clock)


__all__ = [
    "ICallObserver", "ICallTallies", "ICallContext", "Tally", "IClientObserver",
    "IRegistryObserver", "CallInfo", "RegistryEvents",
    "Observers", "combine", "registry_events", "ServerCall", "ObservedProtocol",
    "observed_protocol", "SERVER",
    "CLIENT", "OTHER", "CANCELLED", "REFUSAL_REASONS",
]
