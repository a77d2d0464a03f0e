"""Watch by polling ``lookup``: for backends without a change stream (local, static, Nacos)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from msrpc.observe import RegistryEvents
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IWatch, WatchCallback

Lookup = Callable[[str], "Deferred[list[ServiceInstance]]"]
#: Seconds between polls, or a function giving them (asked before each wait).
Interval = Union[float, Callable[[], float]]


def snapshot_key(instances: Sequence[ServiceInstance]) -> tuple:
    """An order-independent value that changes whenever any instance or its metadata does."""
    return tuple(sorted((i.instance_id, i.host, i.port, i.weight, i.enabled, i.healthy,
                         tuple(sorted(i.metadata.items()))) for i in instances))


@implementer(IWatch)
class PollingWatch:
    """
    Calls ``lookup`` now, then ``interval`` seconds after each answer, and hands changed
    lists to the callback.  ``poll_now`` looks again at once (a backend that hears of
    changes calls it; polls then only catch what notifications missed); ``due``, if
    given, returns the clock time by which the next poll must happen (an expiry the
    backend knows of), or None.  One lookup at a time: a ``poll_now`` during a lookup
    polls again right after it.

    A failed poll keeps the last list (the callback is not called) and is logged once per
    outage, so a registry that is down never empties a client's cache.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, lookup: Lookup, service: str,
                 callback: WatchCallback, interval: Interval,
                 due: Optional[Callable[[], Optional[float]]] = None,
                 events: Optional[RegistryEvents] = None) -> None:
        self._clock = clock
        self._lookup = lookup
        self._events = events
        self._service = service
        self._callback = callback
        self._interval = interval
        self._due = due
        self._last: Optional[tuple] = None
        self._failing = False
        self._polling = False
        self._again = False
        self._stopped = False
        self._timer: Optional[IDelayedCall] = None
        self.poll_now()

    def poll_now(self) -> None:
        """Look at the registry at once (or right after the lookup in progress)."""
        if self._stopped:
            return
        if self._polling:
            self._again = True
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._polling = True
        try:
            d = self._lookup(self._service)
        except Exception as e:  # a lookup must return a Deferred; never stop watching
            d = fail(e)
        d.addCallbacks(self._got, self._failed).addBoth(self._polled)

    def _polled(self, result: Any) -> None:
        self._polling = False
        if self._stopped:
            return
        if self._again:
            self._again = False
            self.poll_now()
            return
        interval = self._interval() if callable(self._interval) else self._interval
        due = self._due() if self._due is not None else None
        delay = interval if due is None else min(interval, max(0.0, due - self._clock.seconds()))
        self._timer = self._clock.callLater(delay, self.poll_now)

    def _got(self, instances: list[ServiceInstance]) -> None:
        if self._failing:
            self._failing = False
            self.log.info("registry answers again for {service}", service=self._service)
            if self._events is not None:
                self._events.watch_reconnected(self._service)
        key = snapshot_key(instances)
        if key != self._last and not self._stopped:
            self._last = key
            try:
                self._callback(list(instances))
            except Exception:
                self.log.failure("watch callback of {service} failed", service=self._service)

    def _failed(self, failure: Any) -> None:
        if self._events is not None:
            self._events.error("watch", failure.value)
        if not self._failing:
            self._failing = True
            self.log.warn("lookup of {service} failed, keeping the last instance list: "
                          "{error}", service=self._service, error=failure.getErrorMessage())

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
