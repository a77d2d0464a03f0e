"""
Health checking over RPC, in the spirit of ``grpc.health.v1``: every ``twistd msrpc``
server serves ``msrpc.health`` (not published in the registry: it is asked of one
instance at a time, at its address)::

    check(service="")                      → "SERVING" | "NOT_SERVING" | "UNKNOWN_SERVICE"
    watch(service="", known=None, wait=30) → the status, as soon as it differs from
                                             ``known``, or after ``wait`` seconds

``""`` means the server as a whole.  A unary framework cannot stream, so ``watch`` is a
long poll: the caller passes the status it knows and gets an answer when it changes (or
when ``wait`` runs out, whichever is first; keep ``wait`` below the call's timeout).
Everything turns NOT_SERVING the moment the server starts to stop, before it
deregisters, and waiting watchers are answered at once.

``check_instances`` asks every instance of a service (``msrpc health``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from msrpc.errors import MsrpcError
from msrpc.registry.instance import ServiceInstance
from msrpc.service import expose, hidden

#: The wire name of the health service.
HEALTH_SERVICE = "msrpc.health"
SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNKNOWN_SERVICE = "UNKNOWN_SERVICE"
#: The longest a ``watch`` waits, whatever the caller asks.
MAX_WAIT = 300.0


class HealthService:
    """
    The ``msrpc.health`` service of one server.  ``serving()`` says whether the server
    takes traffic (started, not stopping); ``services()`` names the services it serves.
    The server calls ``changed()`` whenever either may have changed; applications may
    also mark one service with ``set_status`` (e.g. NOT_SERVING while a dependency is
    down).
    """

    def __init__(self, clock: IReactorTime, serving: Callable[[], bool],
                 services: Callable[[], Iterable[str]]) -> None:
        self._clock = clock
        self._serving = serving
        self._services = services
        self._overrides: dict[str, str] = {}
        self._watchers: list[tuple[str, Optional[str], Deferred[str], IDelayedCall]] = []

    # ------------------------------------------------------------------ on the wire

    @expose(idempotent=True)
    def check(self, service: str = "") -> str:
        """The status of ``service`` ("" for the whole server)."""
        return self.status(service)

    @expose(idempotent=True)
    def watch(self, service: str = "", known: Optional[str] = None,
              wait: float = 30.0) -> "Deferred[str]":
        """The status of ``service`` once it differs from ``known`` (at once if it does),
        else after ``wait`` seconds (at most ``MAX_WAIT``)."""
        current = self.status(service)
        if current != known or wait <= 0:
            return defer.succeed(current)
        d: Deferred[str] = Deferred(lambda _: self._forget(d))
        timer = self._clock.callLater(min(float(wait), MAX_WAIT), self._answer, d, service)
        self._watchers.append((service, known, d, timer))
        return d

    # ------------------------------------------------------------------ local API

    @hidden
    def status(self, service: str = "") -> str:
        if service and service not in set(self._services()):
            return UNKNOWN_SERVICE
        if not self._serving():
            return NOT_SERVING
        return self._overrides.get(service, SERVING)

    @hidden
    def set_status(self, service: str, status: Optional[str]) -> None:
        """Report ``service`` (or "" for all) as ``status``; None: back to the server's."""
        if status not in (None, SERVING, NOT_SERVING):
            raise ValueError(f"status must be {SERVING} or {NOT_SERVING}, got {status!r}")
        if status is None:
            self._overrides.pop(service, None)
        else:
            self._overrides[service] = status
        self.changed()

    @hidden
    def changed(self) -> None:
        """Answer every watcher whose status is no longer the one it knows."""
        for service, known, d, _ in list(self._watchers):
            if self.status(service) != known:
                self._answer(d, service)

    @hidden
    def stop(self) -> None:
        """Answer every waiting watcher now (the server is about to close)."""
        for service, _, d, _ in list(self._watchers):
            self._answer(d, service)

    def _answer(self, d: "Deferred[str]", service: str) -> None:
        self._forget(d)
        if not d.called:
            d.callback(self.status(service))

    def _forget(self, d: "Deferred[str]") -> None:
        for entry in self._watchers:
            if entry[2] is d:
                self._watchers.remove(entry)
                if entry[3].active():
                    entry[3].cancel()
                return


# --------------------------------------------------------------------------- asking


@dataclass(frozen=True)
class InstanceHealth:
    """One instance's answer: its status, or the error that kept it from answering."""

    instance: ServiceInstance
    status: Optional[str]
    error: Optional[BaseException] = None
    seconds: float = 0.0

    @property
    def serving(self) -> bool:
        return self.status == SERVING

    def line(self) -> str:
        """``service  address  STATUS  (1.2 ms)``, as ``msrpc health`` prints it."""
        outcome = self.status or f"UNREACHABLE  {type(self.error).__name__}: {self.error}"
        return (f"{self.instance.service}\t{self.instance.address}\t{outcome}\t"
                f"({self.seconds * 1000:.1f} ms)")


def health_instance(instance: ServiceInstance) -> ServiceInstance:
    """The health service at the address (and with the TLS setting) of ``instance``."""
    return instance.with_changes(service=HEALTH_SERVICE)


async def check_instance(reactor: Any, instance: ServiceInstance,
                         make_client: Callable[[Any], Any], timeout: float) -> InstanceHealth:
    """Ask one instance how its service is, through a client of its own address."""
    from msrpc.registry.static import StaticRegistry

    client = make_client(StaticRegistry({HEALTH_SERVICE: [health_instance(instance)]}))
    started = reactor.seconds()
    try:
        status = await client.invoke(HEALTH_SERVICE, "check", [instance.service],
                                     timeout=timeout)
        return InstanceHealth(instance, str(status), seconds=reactor.seconds() - started)
    except MsrpcError as e:
        return InstanceHealth(instance, None, e, reactor.seconds() - started)
    finally:
        await client.close()


def check_instances(reactor: Any, instances: Sequence[ServiceInstance],
                    make_client: Callable[[Any], Any],
                    timeout: float) -> "Deferred[list[InstanceHealth]]":
    """Ask every instance at once (``make_client(registry)`` makes each one's client);
    fires with the answers in the order of ``instances``."""
    checks = [Deferred.fromCoroutine(check_instance(reactor, i, make_client, timeout))
              for i in instances]
    return defer.gatherResults(checks)


__all__ = ["HealthService", "HEALTH_SERVICE", "SERVING", "NOT_SERVING", "UNKNOWN_SERVICE",
           "InstanceHealth", "check_instance", "check_instances", "health_instance"]
