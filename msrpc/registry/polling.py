"""Watch by polling ``lookup``: for backends without a change stream (local, static, Nacos)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from msrpc.observe import RegistryEvents
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IWatch, WatchCallback

Lookup = Callable[[str], "Deferred[list[ServiceInstance]]"]


def snapshot_key(instances: Sequence[ServiceInstance]) -> tuple:
    """An order-independent value that changes whenever any instance or its metadata does."""
    return tuple(sorted((i.instance_id, i.host, i.port, i.weight, i.enabled, i.healthy,
                         tuple(sorted(i.metadata.items()))) for i in instances))


@implementer(IWatch)
class PollingWatch:
    """
    Calls ``lookup`` every ``interval`` seconds and hands changed lists to the callback.
    A failed poll keeps the last list (the callback is not called) and is logged once per
    outage, so a registry that is down never empties a client's cache.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, lookup: Lookup, service: str,
                 callback: WatchCallback, interval: float,
                 events: Optional[RegistryEvents] = None) -> None:
        self._lookup = lookup
        self._events = events
        self._service = service
        self._callback = callback
        self._last: Optional[tuple] = None
        self._failing = False
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock
        self._loop.start(interval, now=True).addErrback(
            lambda f: self.log.failure("watch loop of {service} died", f, service=service))

    def _poll(self) -> "Deferred[None]":
        return self._lookup(self._service).addCallbacks(self._got, self._failed)

    def _got(self, instances: list[ServiceInstance]) -> None:
        if self._failing:
            self._failing = False
            self.log.info("registry answers again for {service}", service=self._service)
            if self._events is not None:
                self._events.watch_reconnected(self._service)
        key = snapshot_key(instances)
        if key != self._last and self._loop.running:
            self._last = key
            self._callback(list(instances))

    def _failed(self, failure) -> None:
        if self._events is not None:
            self._events.error("watch", failure.value)
        if not self._failing:
            self._failing = True
            self.log.warn("lookup of {service} failed, keeping the last instance list: "
                          "{error}", service=self._service, error=failure.getErrorMessage())

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
