"""
The client: ``client.call("arith", "add", 1, 2)`` → Deferred.

A call resolves the service from the resolver's cache, lets the balancer pick an instance,
sends on that instance's multiplexed connection and waits under a deadline (one shared
timer for all calls, see ``msrpc.deadline``).  Failures are retried on another instance
only when the call surely did not run, or when the method is declared idempotent.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol as TypingProtocol, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from msrpc import compress
from msrpc.balance import Balancer, make_balancer
from msrpc.codec import SERIALIZERS, make_codecs
from msrpc.deadline import Deadlines
from msrpc.health import EjectionPolicy, Health
from msrpc.observe import CANCELLED, CLIENT, TimedProtocol, client_events, combine
from msrpc.errors import (
    CallTimeout, ConnectionLost, EncodeError, MsrpcError, NoInstances, Unavailable,
)
from msrpc.msgo import DIALECTS, MSGO
from msrpc.pool import Connector, Endpoint, Pool, PoolSettings, tcp_connector
from msrpc.protocol import ProtocolSettings, RpcProtocol  # RpcProtocol: the Connector alias names it
from msrpc.registry.interface import IRegistry
from msrpc.resolver import Resolver, ServiceView
from msrpc.sweep import CLIENT_KEEPALIVE, KeepaliveSettings, Sweeper
from msrpc.tls import TLSFiles, client_creator


@dataclass(frozen=True)
class RetryPolicy:
    """
    ``max_attempts`` counts the first try.  Backoff before each retry is jittered
    exponential between ``backoff_initial`` and ``backoff_max``, and never runs past the
    call's deadline.
    """

    max_attempts: int = 3
    backoff_initial: float = 0.005
    backoff_max: float = 0.5

    def delay(self, retry: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * (2 ** (retry - 1)))
        return base * (0.5 + random.random() / 2)


#: Errors after which an idempotent call may run again elsewhere (it may have run once).
IDEMPOTENT_RETRY = (ConnectionLost, Unavailable)


class CallChannel(TypingProtocol):
    """Where an attempt was sent: a multiplexed ``RpcProtocol``, or a dialect's exchange
    (``msrpc.msgo.client``).  The client only ever sends on it and forgets calls."""

    def send_call(self, call: Any) -> int: ...

    def forget(self, rid: int, tell_peer: bool = True) -> Any: ...


#: Deferred.__init__ only sets these two attributes (so Call may set them itself).
_PLAIN_DEFERRED_INIT = set(vars(Deferred())) == {"_callbacks", "_canceller"}


def _cancel_call(call: "Call") -> None:
    # Deferred.cancel errbacks with CancelledError after this returns.
    call.client._abandon(call)


class Call(Deferred):  # type: ignore[type-arg]
    """
    One logical call across its attempts.  It *is* the Deferred the caller gets (one object
    per call instead of two); the protocol reports back through ``succeeded``/``failed``.
    """

    def __init__(self, client: "Client", service: str, method: str, args: Any,
                 kwargs: Any, meta: dict[str, Any], deadline: float) -> None:
        if _PLAIN_DEFERRED_INIT and not Deferred.debug:
            # Exactly what Deferred.__init__ does (checked at import), minus a frame.
            self._callbacks = []
            self._canceller = _cancel_call  # type: ignore[assignment]
        else:
            Deferred.__init__(self, _cancel_call)  # type: ignore[arg-type]
        self.client = client
        self.service = service
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.meta = meta
        self.deadline = deadline

    # Per-call options and per-attempt state; class-level defaults save stores on the
    # hot path and are overridden only when they differ.
    timeout = 0.0
    key: Any = None
    #: True/False when the caller said so; None: ask the servers' published declaration.
    idempotent: Optional[bool] = None
    attempts = 0
    tried: Optional[set[Endpoint]] = None
    protocol: Optional[CallChannel] = None
    rid = 0
    endpoint: Optional[Endpoint] = None
    retry_timer: Optional[IDelayedCall] = None
    done = False

    def succeeded(self, data: Any) -> None:
        self.done = True
        client = self.client
        client._deadlines.discard(self)
        endpoint = self.endpoint
        if endpoint.strikes or endpoint.closing:  # type: ignore[union-attr]
            client._endpoint_answered(endpoint)  # type: ignore[arg-type]
        tallies = client._known_tallies
        if tallies is not None:  # counted here, not in a callback override: no extra frame
            try:
                tally = tallies[self.service][self.method]
            except KeyError:
                tally = client._observer.tally(CLIENT, self.service, self.method)
            durations = tally.durations  # Tally.add, inline; timed by the reply's read
            durations.append((self.protocol.read_at or client._seconds())  # type: ignore
                             + self.timeout - self.deadline)
            if len(durations) >= tally.fold_at:
                tally.fold()
        self.callback(data)

    def failed(self, error: MsrpcError) -> None:
        self.client._failed(self, error)

    def __repr__(self) -> str:
        return f"<Call {self.service}.{self.method} attempts={self.attempts}>"

    __hash__ = object.__hash__


class TalliedCall(Call):
    """
    A call of a client whose observers only count (``msrpc.observe.ICallTallies``:
    metrics): its outcome is recorded in its method's tally, a success for the price of
    an append.  A client without such observers makes plain ``Call`` objects.
    """

    def errback(self, fail: Any = None) -> None:
        """The call failed: its tally counts how, then the caller gets the failure."""
        client = self.client
        client._observer.tally(CLIENT, self.service, self.method).record(
            outcome_code(fail.value if isinstance(fail, Failure) else fail),
            client._seconds() + self.timeout - self.deadline)
        Deferred.errback(self, fail)


class ObservedCall(Call):
    """
    A call of a client with per-call observers (``ICallObserver``; it is their
    ``CallInfo``): they hear of it once before it is sent (and may add to its meta) and
    once with its outcome, which is counted in its tally too when the client also has
    tallies.
    """

    side = CLIENT
    code: int | str = 200
    duration = 0.0
    bytes_in = 0
    bytes_out = 0
    refused = ""
    span: Any = None

    def __init__(self, client: "Client", service: str, method: str, args: Any,
                 kwargs: Any, meta: dict[str, Any], deadline: float) -> None:
        Call.__init__(self, client, service, method, args, kwargs, meta, deadline)
        client._calls.call_started(self)

    @property
    def started(self) -> float:
        return self.deadline - self.timeout  # the deadline is the start plus the timeout

    @property
    def peer(self) -> str:
        """The instance the (last) attempt went to."""
        return self.endpoint.address if self.endpoint is not None else ""

    def callback(self, result: Any) -> None:
        """The call succeeded: observers hear it, then the caller gets the result."""
        self._ended(200)
        Deferred.callback(self, result)

    def errback(self, fail: Any = None) -> None:
        """The call failed: observers hear how, then the caller gets the failure."""
        self._ended(outcome_code(fail.value if isinstance(fail, Failure) else fail))
        Deferred.errback(self, fail)

    def _ended(self, code: int | str) -> None:
        self.code = code
        client = self.client
        self.duration = client._seconds() + self.timeout - self.deadline
        if code != 200:  # a success is counted by ``succeeded``
            tally = client._observer.tally(CLIENT, self.service, self.method)
            if tally is not None:
                tally.record(code, self.duration)
        client._calls.call_finished(self)


def outcome_code(error: Any) -> int | str:
    """How a failed call is labelled: its wire code, else its class name (client-side
    failures such as ``ConnectError``), or ``cancelled``."""
    if isinstance(error, defer.CancelledError):
        return CANCELLED
    code = getattr(error, "code", None)
    return code if isinstance(code, int) else type(error).__name__


class Proxy:
    """``client.proxy("arith").add(1, 2)``: attribute access makes remote methods."""

    def __init__(self, client: "Client", service: str, timeout: Optional[float],
                 idempotent: Iterable[str], key: Any) -> None:
        self._client = client
        self._service = service
        self._timeout = timeout
        self._idempotent = frozenset(idempotent)
        self._key = key

    def __getattr__(self, method: str) -> Callable[..., "Deferred[Any]"]:
        if method.startswith("_"):
            raise AttributeError(method)
        client, service = self._client, self._service
        timeout, key = self._timeout, self._key
        idempotent = method in self._idempotent or None

        start = client._start

        def remote(*args: Any, **kwargs: Any) -> "Deferred[Any]":
            return start(service, method, args, kwargs, timeout, key, idempotent, None)

        remote.__name__ = method
        self.__dict__[method] = remote
        return remote

    def __repr__(self) -> str:
        return f"<Proxy {self._service}>"


class Client:
    """
    Calls services found in ``registry``.  One client is meant to be shared by a whole
    process: it owns the cache, the connections and the one deadline timer.
    """

    log = Logger()

    def __init__(self, reactor: Any, registry: IRegistry, *,
                 timeout: float = 10.0,
                 balancer: str | Mapping[str, str] = "weighted_random",
                 serializer: str = "msgpack",
                 compression: str = "none",
                 retry: RetryPolicy = RetryPolicy(),
                 idempotent: Iterable[str] = (),
                 token: Optional[str] = None,
                 tls: Optional[TLSFiles] = None,
                 connector: Optional[Connector] = None,
                 keepalive: KeepaliveSettings = CLIENT_KEEPALIVE,
                 pool: PoolSettings = PoolSettings(),
                 settings: Optional[ProtocolSettings] = None,
                 ejection: EjectionPolicy = EjectionPolicy(),
                 dialect: Optional[str | Mapping[str, str]] = None,
                 gob_registry: Any = None,
                 observers: Sequence[Any] = ()) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        for name in ([dialect] if isinstance(dialect, str) else (dialect or {}).values()):
            if name not in DIALECTS:
                raise ValueError(f"unknown dialect {name!r}; choose {' or '.join(DIALECTS)}")
        #: The dialect each service speaks when its instances do not say (``"msgo"``...).
        self.dialects = dialect
        self._dialects: dict[str, Any] = {}
        #: Go names ↔ classes for msgo calls (None: ``msrpc.gob.default_registry``).
        self.gob_registry = gob_registry
        self.reactor = reactor
        self.registry = registry
        self.timeout = timeout
        self.retry = retry
        #: "service.method" names that are safe to run twice.
        self.idempotent = set(idempotent)
        self.token = token
        if settings is None:
            try:
                ser = SERIALIZERS[serializer]
            except KeyError:
                raise ValueError(f"unknown serializer {serializer!r}") from None
            settings = ProtocolSettings(codecs=make_codecs(), serializer=ser,
                                        compression=compress.parse_name(compression))
        self.settings = settings
        self._balancers = balancer
        self._sweeper = Sweeper(reactor, keepalive)
        self.tls = tls if tls is not None and tls.enabled else None
        if connector is None:
            creator = client_creator(self.tls) if self.tls is not None else None
            connector = tcp_connector(reactor, pool.connect_timeout, creator)
        self._pool = Pool(reactor, settings, self._sweeper, pool, connector,
                          tls=self.tls is not None)
        self._multi_connection = pool.connections_per_endpoint > 1
        self._seconds = reactor.seconds
        self._resolver = Resolver(registry, self._pool, self._balancer_for, self._dialect_for)
        self._views = self._resolver.views
        self._timeout_ms = int(timeout * 1000)
        self._deadlines: Deadlines[Call] = Deadlines(reactor, self._expired)
        #: Metrics, tracing... (``msrpc.observe``); None when there are none.
        self._observer: Any = combine(observers)
        observer = self._observer
        self._calls: Any = observer.calls if observer is not None else None
        self._outgoing = observer.outgoing if observer is not None else None
        tallied = observer is not None and observer.tallies is not None
        #: service → method → tally (``Observers.client_tallies``) when calls are counted.
        self._known_tallies: Any = (observer.client_tallies if observer is not None and tallied
                                    else None)
        self._call_class: type[Call] = (
            ObservedCall if self._calls is not None else TalliedCall if tallied else Call)
        if tallied:
            self._pool.protocol_factory = lambda settings, dispatcher, sweeper: \
                TimedProtocol(settings, dispatcher, sweeper, reactor)
        self._events = client_events(self._observer)
        self._health = Health(reactor, self._resolver, ejection, self._events)
        self.stats: Counter[str] = Counter()
        self.closed = False

    def _balancer_for(self, service: str) -> Balancer:
        choice = self._balancers
        if not isinstance(choice, str):
            choice = choice.get(service) or choice.get("*") or "weighted_random"
        return make_balancer(choice)

    def _dialect_for(self, service: str) -> Optional[str]:
        choice = self.dialects
        if choice is not None and not isinstance(choice, str):
            choice = choice.get(service) or choice.get("*")
        return choice

    def _dialect(self, name: str) -> Any:
        """The client side of a dialect (created on first use); None: msrpc's own."""
        found = self._dialects.get(name)
        if found is None and name == MSGO:
            from msrpc.msgo.client import MsgoDialect
            found = self._dialects[name] = MsgoDialect(
                self.reactor, self._pool.connector, self._pool.settings.connect_timeout,
                self.gob_registry)
        elif found is None and name not in DIALECTS:
            self.log.warn("ignoring unknown dialect {dialect!r} in instance metadata",
                          dialect=name)
            self._dialects[name] = found = False
        return found or None

    # ------------------------------------------------------------------ public API

    def call(self, service: str, method: str, *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """Call ``service.method(*args, **kwargs)`` with the client's defaults."""
        return self._start(service, method, args, kwargs, None, None, None, None)

    def proxy(self, service: str, *, timeout: Optional[float] = None,
              idempotent: Iterable[str] = (), key: Any = None) -> Proxy:
        return Proxy(self, service, timeout, idempotent, key)

    def invoke(self, service: str, method: str, args: Any = (),
               kwargs: Optional[Mapping[str, Any]] = None, *,
               timeout: Optional[float] = None, key: Any = None,
               idempotent: Optional[bool] = None,
               meta: Optional[Mapping[str, Any]] = None) -> "Deferred[Any]":
        """
        The full form of ``call``: ``timeout`` (seconds, the call's deadline across
        retries), ``key`` (for the consistent-hash balancer), ``idempotent`` (may be
        retried after it possibly ran), ``meta`` (extra request metadata, e.g. trace ids).
        """
        return self._start(service, method, args, kwargs, timeout, key, idempotent, meta)

    def _start(self, service: str, method: str, args: Any, kwargs: Any,
               timeout: Optional[float], key: Any, idempotent: Optional[bool],
               meta: Optional[Mapping[str, Any]]) -> "Deferred[Any]":
        if self.closed:
            return defer.fail(ConnectionLost("client is closed"))
        if timeout is None:
            call_meta: dict[str, Any] = {"deadline": self._timeout_ms}
            timeout = self.timeout
        else:
            call_meta = {"deadline": int(timeout * 1000)}
        if self.token is not None:
            call_meta["token"] = self.token
        if meta:
            call_meta.update(meta)
        if self._outgoing is not None:
            self._outgoing(call_meta)  # trace context (msrpc.observe.ICallContext)
        deadline = self._seconds() + timeout
        call = self._call_class(self, service, method,
                                args if args.__class__ is list else list(args), kwargs,
                                call_meta, deadline)
        call.timeout = timeout
        if key is not None:
            call.key = key
        if idempotent is not None:
            call.idempotent = idempotent
        elif self.idempotent and f"{service}.{method}" in self.idempotent:
            call.idempotent = True
        self._deadlines.add(call, deadline)
        view = self._views.get(service)
        if view is None:
            self._resolver.resolve(service).addCallbacks(
                self._resolved, self._resolve_failed, callbackArgs=(call,),
                errbackArgs=(call,))
            return call
        # The hot path, inlined: pick an instance and send on its open connection.
        try:
            endpoint = view.balancer.pick(key).endpoint
        except NoInstances:
            self._attempt(call, view)  # for the full error message
            return call
        protocol = endpoint.protocol
        if protocol is None or self._multi_connection:
            self._use(call, endpoint)
            return call
        call.endpoint = endpoint
        call.attempts = 1
        try:
            call.rid = protocol.send_call(call)
        except EncodeError as e:
            self._finish_error(call, e)
            return call
        call.protocol = protocol
        return call

    def views(self) -> list[ServiceView]:
        """What the client knows of each service it resolved (instances, members with
        their connection and ejection state), for admin pages and metrics."""
        return list(self._views.values())

    def close(self) -> "Deferred[None]":
        """Stop watching, close every connection (pending calls fail with ConnectionLost)."""
        self.closed = True
        self._resolver.close()
        self._health.stop()
        for dialect in self._dialects.values():
            if dialect:
                dialect.close()
        d = self._pool.close()
        self._deadlines.clear()
        self._sweeper.stop()
        return d

    # ------------------------------------------------------------------ attempts

    def _resolved(self, view: ServiceView, call: Call) -> None:
        if not call.done:
            self._attempt(call, view)

    def _resolve_failed(self, failure: Failure, call: Call) -> None:
        if not call.done:
            self._finish_error(call, failure.value)

    def _attempt(self, call: Call, view: ServiceView) -> None:
        try:
            if call.tried:
                member = view.pick_excluding(call.tried, call.key)
            else:
                member = view.pick(call.key)
        except MsrpcError as e:
            self._finish_error(call, e)
            return
        self._use(call, member.endpoint)

    def _use(self, call: Call, endpoint: Endpoint) -> None:
        """Send on the endpoint's connection, connecting first if it has none."""
        protocol = endpoint.next_protocol() if self._multi_connection else endpoint.protocol
        if protocol is not None:
            self._send(call, protocol, endpoint)
            return
        call.endpoint = endpoint
        dialect = self._dialect(endpoint.dialect) if endpoint.dialect is not None else None
        # A dialect's instance gets a connection of its own per call (msgo's way).
        connected = endpoint.connect() if dialect is None else dialect.connect(endpoint)
        connected.addCallbacks(self._connected, self._connect_failed,
                               callbackArgs=(call, endpoint), errbackArgs=(call, endpoint))

    def _connected(self, protocol: CallChannel, call: Call, endpoint: Endpoint) -> None:
        if not call.done:
            self._send(call, protocol, endpoint)

    def _connect_failed(self, failure: Failure, call: Call, endpoint: Endpoint) -> None:
        self._health.failure(endpoint, failure.value)
        call.attempts += 1
        self._failed(call, failure.value)

    def _send(self, call: Call, protocol: CallChannel, endpoint: Endpoint) -> None:
        call.endpoint = endpoint
        call.attempts += 1
        if call.attempts > 1:
            remaining = call.deadline - self.reactor.seconds()
            call.meta["deadline"] = max(1, int(remaining * 1000))
        try:
            call.rid = protocol.send_call(call)
        except EncodeError as e:
            self._finish_error(call, e)
            return
        call.protocol = protocol

    def _failed(self, call: Call, error: BaseException) -> None:
        if call.done:
            return
        call.protocol = None
        endpoint = call.endpoint
        if endpoint is not None and isinstance(error, (ConnectionLost, CallTimeout)):
            self._health.failure(endpoint, error)
        retryable = getattr(error, "retry_safe", False) or (
            isinstance(error, IDEMPOTENT_RETRY) and self._idempotent(call))
        if retryable and call.attempts < self.retry.max_attempts:
            delay = self.retry.delay(call.attempts)
            if self.reactor.seconds() + delay < call.deadline:
                if endpoint is not None:
                    if call.tried is None:
                        call.tried = set()
                    call.tried.add(endpoint)
                self.stats["retries"] += 1
                if self._events is not None:
                    self._events.call_retried(call.service, call.method, error)
                call.retry_timer = self.reactor.callLater(delay, self._retry, call)
                return
        self._finish_error(call, error)

    def _idempotent(self, call: Call) -> bool:
        if call.idempotent is not None:
            return call.idempotent
        view = self._views.get(call.service)
        return view is not None and any(instance.declares_idempotent(call.method)
                                        for instance in view.instances)

    def _retry(self, call: Call) -> None:
        call.retry_timer = None
        if call.done:
            return
        view = self._resolver.views.get(call.service)
        if view is None:
            self._resolver.resolve(call.service).addCallbacks(
                self._resolved, self._resolve_failed, callbackArgs=(call,),
                errbackArgs=(call,))
        else:
            self._attempt(call, view)

    def _endpoint_answered(self, endpoint: Endpoint) -> None:
        if endpoint.strikes:
            self._health.success(endpoint)
        if endpoint.closing:
            self._pool.close_when_idle(endpoint)

    def _finish_error(self, call: Call, error: BaseException) -> None:
        if call.done:
            return
        call.done = True
        self._deadlines.discard(call)
        self.stats["failed." + type(error).__name__] += 1
        endpoint = call.endpoint
        if endpoint is not None and endpoint.closing:
            self._pool.close_when_idle(endpoint)
        call.errback(error)

    def _stop_waiting(self, call: Call) -> None:
        """Forget the call everywhere (timer, connection, pending retry)."""
        call.done = True
        self._deadlines.discard(call)
        if call.retry_timer is not None and call.retry_timer.active():
            call.retry_timer.cancel()
        call.retry_timer = None
        if call.protocol is not None:
            call.protocol.forget(call.rid)
            call.protocol = None

    def _expired(self, call: Call) -> None:
        if call.done:
            return
        where = f" on {call.endpoint.address}" if call.endpoint is not None else ""
        endpoint = call.endpoint if call.protocol is not None else None
        self._stop_waiting(call)
        if endpoint is not None:
            self._health.failure(endpoint, CallTimeout())
        self.stats["failed.CallTimeout"] += 1
        call.errback(CallTimeout(
            f"{call.service}.{call.method} got no answer within {call.timeout:g}s{where} "
            f"after {call.attempts} attempt(s)"))

    def _abandon(self, call: Call) -> None:
        if not call.done:
            self._stop_waiting(call)
            self.stats["cancelled"] += 1


__all__ = ["Client", "Proxy", "RetryPolicy", "Call", "TalliedCall", "ObservedCall",
           "EjectionPolicy"]
