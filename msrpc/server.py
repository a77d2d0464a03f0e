"""
The server side: a ``Dispatcher`` that admits, decodes and runs requests, and a ``Server``
(an ``IService``) that listens on an endpoint string, registers its services in a registry
and shuts down gracefully.
"""

from __future__ import annotations

import hmac
import json
import socket
import types
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import msgpack
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from msrpc import compress
from msrpc.aio import coroutine_runner
from msrpc.deadline import Deadlines
from msrpc.errors import DecodeError, RegistryAuthError, RegistryError, RpcError
from msrpc.healthcheck import HEALTH_SERVICE, HealthService
from msrpc.limits import TokenBucket
from msrpc.observe import SERVER, Observers, combine, observed_protocol, registry_events
from msrpc.overflow import Overflow
from msrpc.protocol import ProtocolSettings, RpcProtocol
from msrpc.registry.instance import IDEMPOTENT_KEY, ServiceInstance
from msrpc.registry.interface import IRegistration, IRegistry
from msrpc.service import Method, methods_of
from msrpc.sweep import SERVER_KEEPALIVE, KeepaliveSettings, Sweeper
from msrpc.threads import Pool, ThreadSettings, Threads
from msrpc.tls import TLSFiles, server_options
from msrpc.wire import Serializer

log = Logger()


@dataclass(frozen=True)
class ServerLimits:
    """Admission limits; 0 means unlimited.  Beyond them a call is refused, never queued."""

    max_in_flight: int = 10_000          # per server → 503
    max_in_flight_per_connection: int = 1_000  # → 503
    max_connections: int = 10_000        # beyond: 503 or closed within 1 s (msrpc.overflow)
    rate: float = 0.0                    # calls/s for the whole server → 700
    burst: Optional[float] = None


_NO_COMPRESSION = compress.NONE
_GOB = int(Serializer.GOB)
_NUMBERS = frozenset({int, float})
_NO_ARGS: list[Any] = []
_NO_KWARGS: dict[str, Any] = {}
#: Results that are certainly not Deferreds or coroutines (skips an ABC isinstance check).
_PLAIN_RESULTS = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})
_ASYNC_RESULTS = (Deferred, types.CoroutineType)


def read_meta(serializer: int, body: bytes) -> Any:
    """
    The ``meta`` map of a request body, found without decoding anything else: arguments
    are skipped unparsed, so an unauthenticated caller cannot make us build its objects.
    """
    if serializer == Serializer.MSGPACK:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(body))
        unpacker.feed(body)
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "meta":
                return unpacker.unpack()  # ext types stay inert ExtType values
            unpacker.skip()
        return None
    if serializer == Serializer.JSON:
        return json.loads(body).get("meta")  # plain JSON: nothing is instantiated
    return None


class _Running:
    """A request whose handler has not answered yet (async handlers only)."""

    __slots__ = ("protocol", "rid", "ser", "method", "deferred", "expired")

    def __init__(self, protocol: RpcProtocol, rid: int, ser: int, method: Method) -> None:
        self.protocol = protocol
        self.rid = rid
        self.ser = ser
        self.method = method
        self.deferred: Optional[Deferred[Any]] = None
        self.expired = False


class Dispatcher:
    """
    Admission (draining, rate, concurrency), decoding, lookup, deadline and argument
    checks, then the handler.  Sync handlers are answered inline; Deferreds and coroutines
    are tracked so a deadline or a client's cancel can stop them.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, limits: ServerLimits = ServerLimits(),
                 tokens: Optional[Iterable[str]] = None,
                 threads: Optional[Threads] = None, blocking: bool = False,
                 msgo: bool = True) -> None:
        self.clock = clock
        #: Serve Go msgo clients (gob requests), see ``msrpc.msgo.server``.
        self.msgo = msgo
        self._msgo: Any = None
        self.limits = limits
        #: Runs the methods marked blocking (``msrpc.threads``); ``blocking`` is the
        #: default for plain handlers that do not say.
        self.threads = threads
        self.blocking = blocking
        #: How ``async def`` handlers run: ``Deferred.fromCoroutine``, or as asyncio tasks
        #: under an asyncio reactor (``msrpc.aio.coroutine_runner``).
        self.run_coroutine: Callable[[Any], Deferred[Any]] = Deferred.fromCoroutine
        self.methods: dict[tuple[str, str], Method] = {}
        #: (service, method name, Method) of the last request: names arrive as new
        #: strings, and comparing them costs less than hashing them for the lookup.
        self._last_method: tuple[Any, Any, Optional[Method]] = (None, None, None)
        self.services: dict[str, Any] = {}
        self.limiter: Optional[TokenBucket] = (
            TokenBucket(limits.rate, limits.burst, clock.seconds()) if limits.rate else None)
        self.tokens: frozenset[str] = frozenset(tokens or ())
        self._token_bytes = [t.encode("utf-8") for t in self.tokens]
        self._seconds = clock.seconds
        self._max_in_flight = limits.max_in_flight or float("inf")
        self._max_per_connection = limits.max_in_flight_per_connection or float("inf")
        self.in_flight = 0
        self.draining = False
        #: Whether requests are shown to observers as they are dispatched (set by
        #: ``observe``): connections are told of each call (``telling``), or context is
        #: carried in (``incoming``), or both.  Counting alone (metrics) needs neither.
        self.observing = False
        #: Connections follow calls (to their response, a cancel or the connection's end).
        self.identifying = False
        #: Connections are told of each call as the dispatcher identifies it.
        self.telling = False
        #: Calls are only counted (metrics): each method has its tally (``Method.tally``),
        #: and connections are not told of calls one by one (``call_identified``).
        self.counting = False
        self._observer: Optional[Observers] = None
        self.incoming: Optional[Callable[[Any], None]] = None
        self._deadlines: Deadlines[_Running] = Deadlines(clock, self._expired)
        self._idle_waiters: list[Deferred[None]] = []

    # ------------------------------------------------------------------ services

    def add_service(self, name: str, obj: Any, check_types: bool = True) -> None:
        if name in self.services:
            raise ValueError(f"service {name!r} is already registered")
        found = methods_of(name, obj, check_types, self.blocking)
        if not found:
            raise ValueError(f"service {name!r} has no public methods")
        self.services[name] = obj
        for method in found.values():
            self.methods[(name, method.name)] = method
        self._find_tallies()

    def limit_method(self, service: str, method: str, rate: float,
                     burst: Optional[float] = None) -> None:
        """A token bucket for one method, on top of the server-wide one."""
        try:
            entry = self.methods[(service, method)]
        except KeyError:
            raise ValueError(f"no method {service}.{method}") from None
        entry.limiter = TokenBucket(rate, burst, self.clock.seconds())

    def observe(self, observer: Optional[Observers]) -> None:
        """Tell ``observer`` of the requests dispatched from now on (None: stop).  When
        it sets context variables, each request runs in its own copy of the context."""
        self._observer = observer
        self.counting = (observer is not None and observer.calls is None
                         and observer.tallies is not None)
        self.identifying = observer is not None and observer.follows_calls
        self.telling = self.identifying and not self.counting
        self.incoming = observer.incoming if observer is not None else None
        self.observing = self.telling or self.incoming is not None
        self._find_tallies()
        if observer is not None and observer.contextual:
            self.request_received = self._in_own_context  # type: ignore[method-assign]
        else:
            # Not ``__dict__.pop``: asking for ``__dict__`` makes CPython build one, and
            # every ``self.x`` of the hot path then costs more (bench.instructions).
            try:
                del self.request_received
            except AttributeError:
                pass

    def _find_tallies(self) -> None:
        """Give each method the tally its calls are counted in (None: not counted)."""
        observer = self._observer if self.counting else None
        for method in self.methods.values():
            method.tally = (observer.tally(SERVER, method.service, method.name)
                            if observer is not None else None)

    def _in_own_context(self, protocol: RpcProtocol, rid: int, comp: int, ser: int,
                        body: bytes) -> None:
        """``request_received`` in a copy of the current context: what observers set in
        it is seen by the handler (and the coroutine it starts), and gone afterwards."""
        copy_context().run(type(self).request_received, self, protocol, rid, comp, ser,
                           body)

    # ------------------------------------------------------------------ requests

    def request_received(self, protocol: RpcProtocol, rid: int, comp: int, ser: int,
                         body: bytes) -> None:
        if ser == _GOB:  # a Go msgo client: the same checks and handler, msgo's framing
            protocol = self._msgo_request(protocol)
            if protocol is None:
                return
        # The hot path: every check is a local compare until something is wrong.
        if self.draining:
            protocol.refuse(rid, ser, 503, msg="server is shutting down")
            return
        now = self._seconds()
        if self.limiter is not None and not self.limiter.try_acquire(now):
            protocol.refuse(rid, ser, 700, msg="rate limited")
            return
        if (self.in_flight >= self._max_in_flight or
                len(protocol.server_calls) >= self._max_per_connection):
            protocol.refuse(rid, ser, 503, msg="server overloaded: too many calls in flight")
            return
        if self.tokens and not self._token_ok(protocol, comp, ser, body):
            protocol.refuse(rid, ser, 401, msg="missing or wrong auth token")
            return
        request: Any  # a map from the peer: every field is checked below
        try:
            codec = protocol._codecs[ser]
            if comp == _NO_COMPRESSION:
                request = codec.decode(body)
            else:
                request = protocol.decode_body(comp, ser, body)
            service = request["service"]
            name = request["method"]
            last = self._last_method
            if name == last[1] and service == last[0]:
                method = last[2]
            else:
                method = self.methods.get((service, name))
                if method is not None:
                    self._last_method = (service, name, method)
        except DecodeError as e:
            protocol.refuse(rid, ser, 400, msg=f"undecodable request: {e}")
            return
        except KeyError as e:
            if e.args and e.args[0] == ser:
                protocol.refuse(rid, ser, 400, msg=f"unsupported serializer id {ser}")
            else:
                protocol.refuse(rid, ser, 400, msg="malformed request: needs service and "
                                                   "method")
            return
        except (TypeError, AttributeError):
            protocol.refuse(rid, ser, 400, msg="malformed request: needs service and method")
            return
        if method is None:
            protocol.refuse(rid, ser, 404, msg=self._not_found(service, name))
            return
        meta = request.get("meta")
        if self.observing:
            if self.incoming is not None:
                self.incoming(meta)  # trace context (msrpc.observe.ICallContext)
            if self.telling:
                protocol.call_identified(rid, service, name, meta, now, len(body))
        # A counting server (``method.tally`` set) notes a call only when it is not
        # answered at once (``_count_later``); a sync success is counted with its reply.
        remaining = meta.get("deadline") if meta.__class__ is dict else None
        # ``__class__ in`` is the cheap type test of the hot path; mypy cannot narrow it.
        if remaining is not None and not (remaining.__class__ in _NUMBERS
                                          and remaining > 0):  # type: ignore[operator]
            self._refuse_known(protocol, rid, ser, method, now, body, 408,
                               "deadline exceeded before the call ran")
            return
        if method.limiter is not None and not method.limiter.try_acquire(now):
            self._refuse_known(protocol, rid, ser, method, now, body, 700,
                               f"rate limited: {service}.{name}")
            return
        args = request.get("args", _NO_ARGS)
        kwargs = request.get("kwargs")
        if args.__class__ is not list and not isinstance(args, (list, tuple)) or \
                kwargs is not None and kwargs.__class__ is not dict:
            self._refuse_known(protocol, rid, ser, method, now, body, 400,
                               "malformed request: args must be a list and kwargs a map")
            return
        if method.checker is not None:
            problem = method.checker(args, kwargs or _NO_KWARGS)
            if problem is not None:
                self._refuse_known(protocol, rid, ser, method, now, body, 400,
                                   f"{service}.{name}: {problem}")
                return
        if method.blocking:
            self._count_later(protocol, rid, method, now, body)
            self._run_on_thread(protocol, rid, ser, method, args, kwargs, now, remaining)
            return
        try:
            result = method.fn(*args, **kwargs) if kwargs else method.fn(*args)
        except TypeError as e:
            if e.__traceback__ is not None and e.__traceback__.tb_next is None:
                # Raised by the call itself, not inside the handler: wrong arguments.
                self._refuse_known(protocol, rid, ser, method, now, body, 400,
                                   f"{service}.{name}: {e}")
            else:
                self._count_later(protocol, rid, method, now, body)
                self._handler_failed(protocol, rid, ser, method, Failure())
            return
        except Exception:
            self._count_later(protocol, rid, method, now, body)
            self._handler_failed(protocol, rid, ser, method, Failure())
            return
        if result.__class__ in _PLAIN_RESULTS or not isinstance(result, _ASYNC_RESULTS):
            if method.tally is None:
                protocol.reply_ok(rid, ser, codec, result)
            else:
                protocol.reply_counted(rid, ser, codec, result, method.tally, now, body)
        else:
            self._count_later(protocol, rid, method, now, body)
            deadline = (now + remaining / 1000.0  # type: ignore[operator]  # a number
                        if remaining is not None else None)
            self._track(protocol, rid, ser, method, result, deadline)

    def _count_later(self, protocol: RpcProtocol, rid: int, method: Method, now: float,
                     body: bytes) -> None:
        """A counting server notes a call that is not answered at once, so that its
        outcome is counted under its method when it is."""
        if method.tally is not None:
            protocol.note_counted(rid, method.tally, now, len(body))

    def _refuse_known(self, protocol: RpcProtocol, rid: int, ser: int, method: Method,
                      now: float, body: bytes, code: int, msg: str) -> None:
        """Refuse a request whose method is known (a counting server counts it there)."""
        self._count_later(protocol, rid, method, now, body)
        protocol.refuse(rid, ser, code, msg=msg)

    def _msgo_request(self, protocol: RpcProtocol) -> Any:
        """The view a msgo request is served through, or None when msgo is off."""
        if not self.msgo:
            self.log.warn("closing connection from {peer}: gob (msgo) requests are not "
                          "served here", peer=protocol.peer)
            protocol.abort()
            return None
        if self._msgo is None:
            from msrpc.msgo.server import MsgoServer
            self._msgo = MsgoServer(self)
        return self._msgo.view(protocol)

    def _run_on_thread(self, protocol: RpcProtocol, rid: int, ser: int, method: Method,
                       args: Any, kwargs: Any, now: float, remaining: Any) -> None:
        threads = self.threads
        if threads is None:
            protocol.reply(rid, ser, 503, msg="server has no handler threads (not started)")
            return
        d = threads.submit(method.fn, args, kwargs or _NO_KWARGS,
                           f"{method.service}.{method.name}")
        if d is None:
            protocol.reply(rid, ser, 503, msg="server overloaded: every handler thread is "
                                              "busy and the thread queue is full")
            return
        self._track(protocol, rid, ser, method, d,
                    now + remaining / 1000.0 if remaining is not None else None)

    def _token_ok(self, protocol: RpcProtocol, comp: int, ser: int, body: bytes) -> bool:
        """Read only the request's meta (never its arguments) and check the token."""
        try:
            if comp != _NO_COMPRESSION:
                body = compress.decompress(comp, body, protocol.settings.max_decompressed)
            meta = read_meta(ser, body)
        except Exception:
            return False  # undecodable: the caller is not authenticated either way
        token = meta.get("token") if meta.__class__ is dict else None
        if not isinstance(token, str):
            return False
        given = token.encode("utf-8", "replace")
        # Compare against every accepted token, in constant time per token.
        return any([hmac.compare_digest(given, accepted) for accepted in self._token_bytes])

    def _not_found(self, service: Any, name: Any) -> str:
        if service not in self.services:
            return f"unknown service {service!r}"
        return f"unknown method {name!r} of service {service!r}"

    def _handler_failed(self, protocol: RpcProtocol, rid: int, ser: int, method: Method,
                        failure: Failure) -> None:
        error = failure.value
        if isinstance(error, RpcError):
            protocol.reply(rid, ser, error.code, msg=error.message, details=error.details)
            return
        remote_type = type(error).__name__
        self.log.failure("{service}.{method} raised {type}", failure,
                         service=method.service, method=method.name, type=remote_type)
        protocol.reply(rid, ser, 500, msg=str(error), details={"type": remote_type})

    # ------------------------------------------------------------------ async handlers

    def _track(self, protocol: RpcProtocol, rid: int, ser: int, method: Method, result: Any,
               deadline: Optional[float]) -> None:
        running = _Running(protocol, rid, ser, method)
        d = result if isinstance(result, Deferred) else self.run_coroutine(result)
        running.deferred = d
        protocol.server_calls[rid] = running
        self.in_flight += 1
        if deadline is not None:
            self._deadlines.add(running, deadline)
        d.addCallbacks(self._async_succeeded, self._async_failed,
                       callbackArgs=(running,), errbackArgs=(running,))

    def _finish(self, running: _Running) -> bool:
        """Forget a finished call; False if it was already forgotten (cancelled by peer)."""
        self._deadlines.discard(running)
        calls = running.protocol.server_calls
        if calls.get(running.rid) is not running:
            return False
        del calls[running.rid]
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.called:  # a drain that timed out cancelled its waiter
                    waiter.callback(None)
        return True

    def _async_succeeded(self, result: Any, running: _Running) -> None:
        if self._finish(running):
            running.protocol.reply(running.rid, running.ser, 200, result)

    def _async_failed(self, failure: Failure, running: _Running) -> None:
        if not self._finish(running):
            return
        if running.expired:
            running.protocol.reply(running.rid, running.ser, 408,
                                   msg="deadline exceeded while the call ran")
            return
        if failure.check(defer.CancelledError):
            running.protocol.reply(running.rid, running.ser, 503, msg="call cancelled")
            return
        self._handler_failed(running.protocol, running.rid, running.ser, running.method,
                             failure)

    def _expired(self, running: _Running) -> None:
        running.expired = True
        if running.deferred is not None:
            running.deferred.cancel()

    def cancel_received(self, protocol: RpcProtocol, rid: int) -> None:
        running = protocol.server_calls.get(rid)
        if running is not None and running.deferred is not None:
            self._finish(running)  # the client no longer waits: send nothing
            running.deferred.cancel()
            if self.identifying:
                protocol.call_cancelled(rid)

    def connection_lost(self, protocol: RpcProtocol) -> None:
        for running in list(protocol.server_calls.values()):
            self._finish(running)
            if running.deferred is not None:
                running.deferred.cancel()

    def close(self) -> None:
        """Drop the deadline timer once every connection is gone (a stopped server leaves
        no timer behind)."""
        self._deadlines.clear()

    def when_idle(self) -> "Deferred[None]":
        """Fires once no call is in flight (now, if none is)."""
        if self.in_flight == 0:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d


class RpcServerFactory(Factory):
    """Builds server-side protocols and keeps track of them for draining and limits."""

    def __init__(self, dispatcher: Dispatcher, settings: ProtocolSettings,
                 sweeper: Sweeper) -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.sweeper = sweeper
        self.connections: set[RpcProtocol] = set()
        self._limit = dispatcher.limits.max_connections
        #: Connections over the limit; its ``listener`` is set once the port listens.
        self.overflow = Overflow(sweeper.clock, settings, self._limit)
        self._closed_waiters: list[Deferred[None]] = []
        #: Set by ``observe``: connections are then observed (``ObservedProtocol``).
        self.observer: Optional[Observers] = None

    def observe(self, observer: Optional[Observers]) -> None:
        """Observe every call of connections made from now on (None: stop)."""
        self.observer = observer
        self.dispatcher.observe(observer)

    def _protocol(self) -> RpcProtocol:
        if self.observer is None or not self.observer.follows_calls:
            return RpcProtocol(self.settings, self.dispatcher, self.sweeper)
        return observed_protocol(self.settings, self.dispatcher, self.sweeper, self.observer,
                                 self.dispatcher.clock)

    def _lost(self, protocol: RpcProtocol) -> None:
        self.connections.discard(protocol)
        if self.overflow.paused:
            self.overflow.room()
        if not self.connections:
            waiters, self._closed_waiters = self._closed_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self) -> "Deferred[None]":
        """Close every connection; fires once all are gone."""
        self.overflow.close_all()
        if not self.connections:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        for protocol in list(self.connections):
            protocol.close(self.sweeper.clock)
        return d

    def buildProtocol(self, addr: Any) -> Optional[RpcProtocol]:
        if self._limit and len(self.connections) >= self._limit:
            return self.overflow.accept(addr)
        protocol = self._protocol()
        protocol.factory = self
        protocol.on_lost = self._lost
        self.connections.add(protocol)
        return protocol


def is_tls_endpoint(listen: str) -> bool:
    """Whether a server endpoint string does TLS itself (``ssl:...``)."""
    return listen.split(":", 1)[0].strip().lower() == "ssl"


def default_advertise_host(bound_host: str) -> str:
    """The address other machines should use when we listen on ``bound_host``."""
    if bound_host not in ("0.0.0.0", "::", ""):
        return bound_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def published_metadata(dispatcher: Dispatcher, service: str,
                       metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus the methods declared idempotent, so that clients know without
    being told which calls they may retry after a timeout or a lost connection."""
    idempotent = sorted(method for (name, method), entry in dispatcher.methods.items()
                        if name == service and entry.idempotent)
    if not idempotent or IDEMPOTENT_KEY in metadata:
        return dict(metadata)
    return {**metadata, IDEMPOTENT_KEY: ",".join(idempotent)}


#: Seconds before the first retry of a failed registration; doubles up to the maximum.
REGISTER_RETRY_INITIAL = 0.5
REGISTER_RETRY_MAX = 30.0


class Server(Service):
    """
    Listens on an endpoint (a string, or an ``IStreamServerEndpoint``), serves registered
    service objects, and publishes them in a registry once the port is listening.
    ``stopService`` deregisters first, waits ``grace`` seconds so clients' caches drop us,
    stops accepting, lets in-flight calls finish for up to ``drain_timeout`` (new ones get
    503), then closes the connections.
    """

    log = Logger()

    def __init__(self, reactor: Any, listen: str | IStreamServerEndpoint = "tcp:0", *,
                 registry: Optional[IRegistry] = None,
                 services: Optional[Mapping[str, Any]] = None,
                 advertise: Optional[str] = None, weight: float = 10.0,
                 metadata: Optional[Mapping[str, str]] = None,
                 settings: Optional[ProtocolSettings] = None,
                 limits: ServerLimits = ServerLimits(),
                 keepalive: KeepaliveSettings = SERVER_KEEPALIVE,
                 tokens: Optional[Iterable[str]] = None,
                 grace: float = 2.0, drain_timeout: float = 10.0,
                 check_types: bool = True, tls: Optional[TLSFiles] = None,
                 threads: ThreadSettings = ThreadSettings(),
                 thread_pool: Optional[Pool] = None,
                 observers: Sequence[Any] = (), health: bool = True,
                 msgo: bool = True) -> None:
        self.reactor = reactor
        self.listen = listen
        self.registry = registry
        self.advertise = advertise
        self.weight = weight
        self.metadata = dict(metadata or {})
        self.grace = grace
        self.drain_timeout = drain_timeout
        self.check_types = check_types
        self.tls = tls if tls is not None and tls.enabled else None
        tls_endpoint = isinstance(listen, str) and is_tls_endpoint(listen)
        if self.tls is not None and tls_endpoint:
            raise ValueError(f"{str(listen).split(':')[0]}: endpoints bring their own TLS; "
                             "wrapping it in TLS again would fail every call")
        if self.tls is not None or tls_endpoint:
            self.metadata.setdefault("tls", "1")  # clients must not talk to us in clear
        self.dispatcher = Dispatcher(reactor, limits, tokens, blocking=threads.blocking,
                                     msgo=msgo)
        self.dispatcher.run_coroutine = coroutine_runner(reactor)
        self.thread_settings = threads
        self._thread_pool = thread_pool
        self.settings = settings or ProtocolSettings()
        self.sweeper = Sweeper(reactor, keepalive)
        self.factory = RpcServerFactory(self.dispatcher, self.settings, self.sweeper)
        #: Metrics, tracing, access log... (``msrpc.observe``); None when there are none.
        self.observer = combine(observers)
        self.factory.observe(self.observer)
        self.port: Optional[IListeningPort] = None
        self.registrations: list[IRegistration] = []
        #: Fires with the listening address once listening and registered.
        self.ready: Deferred[Any] = Deferred()
        self._starting: Optional[Deferred[Any]] = None
        self._stopping: Optional[Deferred[None]] = None
        self._register_wait: Optional[Deferred[None]] = None
        self._stop_wait: Optional[Deferred[Any]] = None
        self.hurried = False
        #: ``msrpc.health`` (``msrpc.healthcheck``): served, never registered.
        self.health: Optional[HealthService] = None
        if health:
            self.health = HealthService(reactor, self._serving, self._served)
            self.dispatcher.add_service(HEALTH_SERVICE, self.health, check_types)
        for name, obj in (services or {}).items():
            self.add_service(name, obj)

    def add_service(self, name: str, obj: Any) -> None:
        """Serve ``obj``'s public methods as service ``name`` (before start)."""
        self.dispatcher.add_service(name, obj, self.check_types)

    @property
    def address(self) -> Any:
        return self.port.getHost() if self.port is not None else None

    def instances(self) -> list[ServiceInstance]:
        """What this server publishes: one instance per service, at the advertised address."""
        address = self.address
        if address is None or not hasattr(address, "port"):
            return []
        host, port = self.advertise or default_advertise_host(address.host), address.port
        if self.advertise and ":" in self.advertise and not self.advertise.endswith("]"):
            host, _, port_text = self.advertise.rpartition(":")
            port = int(port_text)
        return [ServiceInstance(service=name, host=host.strip("[]"), port=port,
                                weight=self.weight,
                                metadata=published_metadata(self.dispatcher, name,
                                                            self.metadata))
                for name in self._served()]

    def _served(self) -> list[str]:
        """The services this server publishes (all but its own health service)."""
        return [name for name in self.dispatcher.services if name != HEALTH_SERVICE]

    def _serving(self) -> bool:
        return bool(self.running) and not self.dispatcher.draining

    def readiness(self) -> list[str]:
        """Why the server should get no new traffic now; empty when it should.  It is
        ready once it listens and is registered, and no longer from the moment a stop
        begins (before it deregisters), so a readiness probe takes it out first."""
        if not self.running:
            return ["draining"] if self.port is not None else ["not started"]
        if self.port is None:
            return ["not listening"]
        if self.registry is not None and not self.ready.called:
            return ["not registered"]
        return []

    def when_stopped(self) -> "Deferred[None]":
        """Fires once a stop in progress has finished (at once when none is)."""
        stopping = self._stopping
        if stopping is None or stopping.called:
            return defer.succeed(None)
        done: Deferred[None] = Deferred()

        def fire(result: Any) -> Any:
            done.callback(None)
            return result

        stopping.addBoth(fire)
        return done

    # ------------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        Service.startService(self)
        if any(method.blocking for method in self.dispatcher.methods.values()):
            # A fresh pool per start: a stopped ThreadPool cannot be started again.
            threads = Threads(self.reactor.callFromThread, self.thread_settings,
                              self._thread_pool)
            threads.start()
            self.dispatcher.threads = threads
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addCallbacks(self.ready.callback, self._start_failed)
        if self.health is not None:
            self.health.changed()

    def _start_failed(self, failure: Failure) -> None:
        self.log.failure("msrpc server failed to start on {listen}", failure,
                         listen=self.listen)
        self.ready.errback(failure)

    async def _start(self) -> Any:
        endpoint = (serverFromString(self.reactor, self.listen)
                    if isinstance(self.listen, str) else self.listen)
        factory: Any = self.factory
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(server_options(self.tls), False, factory)
        self.port = await endpoint.listen(factory)
        self.factory.overflow.listener = self.port  # paused while the overflow is full
        address = self.port.getHost()
        self.log.info("msrpc serving {services} on {address}",
                      services=", ".join(sorted(self._served())), address=address)
        if self.registry is not None:
            instances = self.instances()
            if not instances:
                self.log.warn("not registering: cannot advertise {address}", address=address)
            for instance in instances:
                if not self.running:  # stopped while registering
                    break
                await self._register(self.registry, instance)
        return address

    async def _register(self, registry: IRegistry, instance: ServiceInstance) -> None:
        """Register, retrying with backoff while the registry is unreachable or failing:
        a server started during a registry outage joins as soon as the registry is back
        (it serves direct callers meanwhile).  Rejected credentials are not retried."""
        delay = REGISTER_RETRY_INITIAL
        while True:
            try:
                registration = await registry.register(instance)
                break
            except RegistryAuthError:
                raise
            except RegistryError as e:
                events = registry_events(registry)
                if events is not None:
                    events.error("register", e)
                if not self.running:
                    return
                self.log.warn("registering {service} in {registry} failed, retrying in "
                              "{delay:g}s: {error}", service=instance.service,
                              registry=registry.name, delay=delay, error=e)
                self._register_wait = deferLater(self.reactor, delay, lambda: None)
                try:
                    await self._register_wait
                except defer.CancelledError:
                    return  # stopped while waiting
                finally:
                    self._register_wait = None
                delay = min(delay * 2, REGISTER_RETRY_MAX)
        self.registrations.append(registration)
        self.log.info("registered {service} at {address} in {registry}",
                      service=instance.service, address=instance.address,
                      registry=registry.name)

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        if self.health is not None:
            self.health.changed()  # NOT_SERVING from now on: watchers hear it at once
        self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self._register_wait is not None:
            self._register_wait.cancel()
        if self._starting is not None and not self._starting.called:
            await defer.DeferredList([self._starting], consumeErrors=True)
        registrations, self.registrations = self.registrations, []
        for registration in registrations:
            if self.hurried:
                break  # the registry's own close deregisters what is left
            try:
                await self._unless_hurried(registration.deregister())
            except Exception as e:
                events = registry_events(self.registry)
                if events is not None:
                    events.error("deregister", e)
                self.log.warn("deregistering {service} failed: {error}",
                              service=registration.instance.service, error=e)
        if registrations and self.grace > 0 and not self.hurried:
            await self._unless_hurried(deferLater(self.reactor, self.grace, lambda: None))
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
        self.dispatcher.draining = True
        if self.health is not None:
            self.health.stop()  # long-polling watchers must not hold the drain up
        if self.dispatcher.in_flight and not self.hurried:
            idle = self.dispatcher.when_idle()
            idle.addTimeout(self.drain_timeout, self.reactor)
            try:
                await self._unless_hurried(idle)
            except defer.TimeoutError:
                self.log.warn("drain timeout: {n} calls still running are cut off",
                              n=self.dispatcher.in_flight)
        await self.factory.close_all()
        self.sweeper.stop()
        self.dispatcher.close()
        if self.dispatcher.threads is not None:
            self.dispatcher.threads.stop()

    async def _unless_hurried(self, step: "Deferred[Any]") -> None:
        """Wait for one phase of the stop, unless ``hurry`` cuts it short."""
        self._stop_wait = step
        try:
            await step
        except defer.CancelledError:
            if not self.hurried:
                raise
        finally:
            self._stop_wait = None

    def hurry(self) -> None:
        """
        Finish a graceful stop now: skip what is left of deregistering, the grace period
        and the drain; calls still running are cut off (their clients see the connection
        close).  ``twistd msrpc`` calls it on a second SIGTERM or SIGINT.
        """
        if self.running or self.hurried:
            return
        self.hurried = True
        self.log.warn("stopping now: {n} calls in flight are cut off",
                      n=self.dispatcher.in_flight)
        if self._stop_wait is not None:
            self._stop_wait.cancel()
