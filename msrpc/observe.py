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
- ``IClientObserver``: what the shared client does on its own (retries, ejections).
- ``IRegistryObserver``: what registries report about themselves (errors, watch
  reconnects), through their ``events`` (``RegistryEvents``).
"""

from __future__ import annotations

import contextvars
from typing import Any, Iterable, Optional, Protocol as TypingProtocol, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.wire import HEADER_SIZE, REQUEST

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
    """Several observers as one; each is told only what its interfaces cover."""

    def __init__(self, observers: Iterable[Any]) -> None:
        self.all = list(observers)
        self._calls = [o for o in self.all if ICallObserver.providedBy(o)]
        self._clients = [o for o in self.all if IClientObserver.providedBy(o)]
        self._registries = [o for o in self.all if IRegistryObserver.providedBy(o)]
        self.contextual = any(getattr(o, "contextual", False) for o in self._calls)

    def call_started(self, call: CallInfo) -> None:
        for observer in self._calls:
            observer.call_started(call)

    def call_finished(self, call: CallInfo) -> None:
        for observer in self._calls:
            try:
                observer.call_finished(call)
            except Exception:
                log.failure("observer {observer!r} failed", observer=observer)

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


def combine(observers: Sequence[Any]) -> Optional[Any]:
    """One object telling all of ``observers`` (the observer itself when it is alone: no
    extra call per call), or None when there are none.  Check what it provides before
    telling it client events (``client_events``)."""
    if not observers:
        return None
    if len(observers) == 1 and ICallObserver.providedBy(observers[0]):
        return observers[0]
    return Observers(observers)


def client_events(observer: Any) -> Optional[IClientObserver]:
    """``observer`` if it wants to hear about retries and ejections, else None."""
    return observer if observer is not None and IClientObserver.providedBy(observer) else None


# --------------------------------------------------------------------------- server side


class ServerCall:
    """One request as a server's observers see it (``CallInfo``)."""

    __slots__ = ("peer", "service", "method", "meta", "started", "bytes_in", "refused",
                 "span", "code", "duration", "bytes_out")

    side = SERVER

    def __init__(self, peer: str, service: str, method: str, meta: Any, started: float,
                 bytes_in: int) -> None:
        self.peer = peer
        self.service = service
        self.method = method
        self.meta = meta
        self.started = started
        self.bytes_in = bytes_in
        self.refused = ""
        self.span: Any = None
        # Set when the call ends:
        self.code: int | str
        self.duration: float
        self.bytes_out: int


class ObservedProtocol(RpcProtocol):
    """
    A server connection whose calls are observed.  The dispatcher opens a ``ServerCall``
    once it knows the method a request names (``call_identified``); the response written
    for it (or a cancel, or the connection's end) closes it.  A request refused before
    that (limits, auth, undecodable, unknown method) is closed as ``other``/``other``,
    with its size unknown (0).
    """

    def __init__(self, settings: ProtocolSettings, dispatcher: Any, sweeper: Any,
                 observer: ICallObserver, clock: IReactorTime) -> None:
        super().__init__(settings, dispatcher, sweeper)
        self.observer = observer
        self._seconds = clock.seconds
        self._started = observer.call_started
        self._finished = observer.call_finished
        #: request id → the call waiting for its response.
        self.observed: dict[int, ServerCall] = {}

    def call_identified(self, rid: int, service: str, method: str, meta: Any,
                        started: float, size: int) -> None:
        call = self.observed[rid] = ServerCall(self.peer, service, method, meta, started,
                                               HEADER_SIZE + size)
        self._started(call)

    def refuse(self, rid: int, ser: int, code: int, data: Any = None, msg: str = "",
               details: Any = None) -> None:
        self.note_refusal(rid, code)
        self.reply(rid, ser, code, data, msg, details)

    def note_refusal(self, rid: int, code: int) -> None:
        """Why request ``rid`` is refused (a dialect refusing in its own framing, such as
        ``msrpc.msgo.server``, notes it here too)."""
        call = self.observed.get(rid)
        if call is None:  # refused before its method was known
            call = self.observed[rid] = ServerCall(self.peer, OTHER, OTHER, None,
                                                   self._seconds(), 0)
        draining = code == 503 and getattr(self.dispatcher, "draining", False)
        call.refused = "draining" if draining else REFUSAL_REASONS.get(code, str(code))

    def _send_response(self, ser: int, rid: int, code: int, body: bytes) -> int:
        size = RpcProtocol._send_response(self, ser, rid, code, body)
        self._answered(rid, code, size)
        return size

    def send_response_frame(self, rid: int, code: int, frame: bytes) -> int:
        size = RpcProtocol.send_response_frame(self, rid, code, frame)
        self._answered(rid, code, size)
        return size

    def _answered(self, rid: int, code: int, size: int) -> None:
        call = self.observed.pop(rid, None)
        if call is not None:
            call.code = code
            call.bytes_out = size
            call.duration = self._seconds() - call.started
            self._finished(call)

    def call_cancelled(self, rid: int) -> None:
        self._unanswered(rid)  # the server answers a cancelled call with nothing

    def _unanswered(self, rid: int) -> None:
        call = self.observed.pop(rid, None)
        if call is not None:
            call.code = CANCELLED
            call.bytes_out = 0
            call.duration = self._seconds() - call.started
            self._finished(call)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        for rid in list(self.observed):
            self._unanswered(rid)  # running calls whose caller hung up


class ContextualProtocol(ObservedProtocol):
    """
    For observers that set context variables the handler must see (trace context): each
    request is dispatched in a copy of the current context, so what they set is seen by
    the handler (and by the coroutine it starts) and gone once the request is dispatched.
    """

    def _frame_received(self, mtype: int, comp: int, ser: int, rid: int, body: bytes) -> None:
        if mtype == REQUEST and self.dispatcher is not None:
            contextvars.copy_context().run(self.dispatcher.request_received, self, rid, comp,
                                           ser, body)
        else:
            RpcProtocol._frame_received(self, mtype, comp, ser, rid, body)


def observed_protocol(settings: ProtocolSettings, dispatcher: Any, sweeper: Any,
                      observer: ICallObserver, clock: IReactorTime) -> ObservedProtocol:
    """The observed server connection ``observer`` needs."""
    cls = ContextualProtocol if getattr(observer, "contextual", False) else ObservedProtocol
    return cls(settings, dispatcher, sweeper, observer, clock)


__all__ = [
    "ICallObserver", "IClientObserver", "IRegistryObserver", "CallInfo", "RegistryEvents",
    "Observers", "combine", "registry_events", "ServerCall", "ObservedProtocol",
    "ContextualProtocol", "observed_protocol", "SERVER",
    "CLIENT", "OTHER", "CANCELLED", "REFUSAL_REASONS",
]
