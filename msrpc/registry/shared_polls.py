"""
Watches by polling, for registries without a change stream, at scale.

However many watches a service has, it is polled once per interval; all services share one
timer; all polls together stay within a budget of polls per second (the interval of each
service stretches to ``services / budget`` seconds when there are many); and a push that says
"this service changed" polls it at once, through a second budget of its own so that a flood
of pushes (forged ones included) cannot turn into a flood of requests.
"""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Callable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from msrpc.observe import RegistryEvents
from msrpc.registry.instance import ServiceInstance
from msrpc.registry.interface import IWatch, WatchCallback
from msrpc.registry.polling import snapshot_key
from msrpc.registry.registration import CallbackWatch

Lookup = Callable[[str], "Deferred[list[ServiceInstance]]"]
#: Told ``(service, pushed)`` after a poll found a change; ``pushed``: a push asked for it.
ChangeHook = Callable[[str, bool], None]


class Reservations:
    """
    A token bucket that hands out start times instead of refusals: ``reserve(now)`` books
    the next slot (``now`` while tokens last, later when they ran out), so work is spread at
    ``rate`` per second after a burst of ``burst``.  Calls must come in time order.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._at: Optional[float] = None

    def reserve(self, now: float) -> float:
        elapsed = 0.0 if self._at is None else max(0.0, now - self._at)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate) - 1.0
        self._at = now
        return now if self._tokens >= 0 else now - self._tokens / self.rate


class _Entry:
    """One polled service: its watchers' callbacks, the last list, and when to poll next."""

    __slots__ = ("service", "callbacks", "snapshot", "instances", "due", "polling", "again",
                 "reserved", "poked", "failing")

    def __init__(self, service: str) -> None:
        self.service = service
        self.callbacks: list[WatchCallback] = []
        self.snapshot: Optional[tuple] = None
        self.instances: list[ServiceInstance] = []
        self.due = 0.0
        self.polling = False
        self.again = False      # a push came while a poll was in flight: poll once more
        self.reserved = False   # ``due`` is a budget slot already booked
        self.poked = False      # the poll at ``due`` answers a push
        self.failing = False


class SharedPolls:
    """
    Polls ``lookup(service)`` for every watched service.  ``interval`` is the wanted period
    (settable: a registry shortens it when its pushes stop arriving); ``budget`` bounds polls
    per second; ``poke_rate`` (default: the budget) bounds polls caused by ``poke``.  Each
    period is shortened by up to ``jitter`` (a share) so services drift apart.  A failed poll
    keeps the last list: watchers only ever see good lists.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, lookup: Lookup, *, interval: float,
                 budget: float, poke_rate: Optional[float] = None, jitter: float = 0.1,
                 name: str = "registry", on_change: Optional[ChangeHook] = None,
                 rng: Optional[random.Random] = None,
                 events: Optional[RegistryEvents] = None) -> None:
        if interval <= 0:
            raise ValueError("the poll interval must be positive")
        self.clock = clock
        self._lookup = lookup
        self._interval = float(interval)
        self.budget = float(budget)
        self._budget = Reservations(budget)
        poke_rate = poke_rate or budget
        self._pokes = Reservations(poke_rate, burst=max(1.0, poke_rate))
        self.jitter = jitter
        self.name = name
        self.on_change = on_change
        #: Where failed polls and recovered watches are reported (``msrpc.observe``).
        self.events = events
        self._rng = rng or random.Random()
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._timer: Optional[IDelayedCall] = None
        self._failing = 0
        #: Counters for tests, benchmarks and metrics.
        self.polls = 0
        self.failures = 0

    # ------------------------------------------------------------------ public

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        """A shorter interval applies at once (a service due later is moved forward)."""
        shorter = value < self._interval
        self._interval = float(value)
        if shorter:
            latest = self.clock.seconds() + self.period()
            for entry in self._entries.values():
                if not entry.polling and not entry.reserved and entry.due > latest:
                    self._schedule(entry, self._next_due())
            self._arm()

    @property
    def services(self) -> list[str]:
        return list(self._entries)

    def period(self) -> float:
        """Seconds between two polls of one service: the interval, or longer under budget."""
        return max(self._interval, len(self._entries) / self.budget)

    def watch(self, service: str, callback: WatchCallback,
              initial: Optional[Sequence[ServiceInstance]] = None) -> IWatch:
        """
        Call ``callback`` with the list of ``service`` now (``initial``, a fresh lookup's,
        if given: its first poll then comes within one period) and after every change.
        """
        entry = self._entries.get(service)
        if entry is None:
            entry = self._entries[service] = _Entry(service)
            entry.callbacks.append(callback)
            if initial is None:
                self._due_now(entry, poked=False)
            else:
                entry.snapshot = snapshot_key(initial)
                entry.instances = list(initial)
                self._deliver(entry, callback)
                self._schedule(entry, self.clock.seconds() + self.period() * self._rng.random())
                self._arm()
        else:
            entry.callbacks.append(callback)
            if entry.snapshot is not None:
                self._deliver(entry, callback)
        return CallbackWatch(lambda: self._unwatch(entry, callback))

    def poke(self, service: str) -> bool:
        """Poll ``service`` now (it changed); False if nobody watches it."""
        entry = self._entries.get(service)
        if entry is None:
            return False
        if entry.polling:
            entry.again = True
        elif not entry.poked:
            start = self._pokes.reserve(self.clock.seconds())
            self._start_or_schedule(entry, start, poked=True)
        return True

    def holds(self, service: str, instances: Sequence[ServiceInstance]) -> bool:
        """Whether the last list of a watched ``service`` is ``instances`` (no change)."""
        entry = self._entries.get(service)
        return entry is not None and entry.snapshot == snapshot_key(instances)

    def poll_all_soon(self) -> None:
        """Every service polled again as soon as the budget allows (e.g. push just started)."""
        for entry in self._entries.values():
            if not entry.polling and not entry.reserved:
                self._schedule(entry, self.clock.seconds())
        self._arm()

    def stop(self) -> None:
        self._entries.clear()
        self._heap.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # ------------------------------------------------------------------ scheduling

    def _next_due(self) -> float:
        shorten = 1.0 - self.jitter * self._rng.random()
        return self.clock.seconds() + self.period() * shorten

    def _due_now(self, entry: _Entry, poked: bool) -> None:
        now = self.clock.seconds()
        self._start_or_schedule(entry, self._budget.reserve(now), poked)

    def _start_or_schedule(self, entry: _Entry, start: float, poked: bool) -> None:
        if start <= self.clock.seconds():
            self._start(entry, poked)
            return
        entry.reserved = True
        entry.poked = poked
        self._schedule(entry, start)
        self._arm()

    def _schedule(self, entry: _Entry, at: float) -> None:
        entry.due = at
        heapq.heappush(self._heap, (at, next(self._seq), entry.service))

    def _current(self, at: float, service: str) -> Optional[_Entry]:
        entry = self._entries.get(service)
        if entry is None or entry.polling or entry.due != at:
            return None  # stopped, busy, or moved since this heap item was pushed
        return entry

    def _arm(self) -> None:
        while self._heap and self._current(self._heap[0][0], self._heap[0][2]) is None:
            heapq.heappop(self._heap)
        if not self._heap:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        at = self._heap[0][0]
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= at:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        while self._heap and self._heap[0][0] <= now:
            at, _, service = heapq.heappop(self._heap)
            entry = self._current(at, service)
            if entry is None:
                continue
            if entry.reserved:
                self._start(entry, entry.poked)
            else:
                self._due_now(entry, poked=False)
        self._arm()

    # ------------------------------------------------------------------ polling

    def _start(self, entry: _Entry, poked: bool) -> None:
        entry.polling = True
        entry.reserved = entry.poked = False
        self.polls += 1
        d = self._lookup(entry.service)
        d.addCallbacks(self._got, self._failed, callbackArgs=(entry, poked),
                       errbackArgs=(entry,))
        d.addBoth(self._done, entry)

    def _got(self, instances: Sequence[ServiceInstance], entry: _Entry, poked: bool) -> None:
        if entry.failing:
            entry.failing = False
            if self.events is not None:
                self.events.watch_reconnected(entry.service)
            self._failing -= 1
            if self._failing == 0:
                self.log.info("{name}: lookups answer again", name=self.name)
        if self._entries.get(entry.service) is not entry:
            return
        key = snapshot_key(instances)
        if key == entry.snapshot:
            return
        first = entry.snapshot is None
        entry.snapshot = key
        entry.instances = list(instances)
        for callback in list(entry.callbacks):
            self._deliver(entry, callback)
        if not first and self.on_change is not None:
            self.on_change(entry.service, poked)

    def _failed(self, failure: Failure, entry: _Entry) -> None:
        self.failures += 1
        if self.events is not None:
            self.events.error("watch", failure.value)
        if entry.failing:
            return
        entry.failing = True
        self._failing += 1
        if self._failing == 1:  # one line per outage, however many services poll
            self.log.warn("{name}: lookup of {service} failed, keeping the last instance "
                          "lists: {error}", name=self.name, service=entry.service,
                          error=failure.getErrorMessage())

    def _done(self, _: object, entry: _Entry) -> None:
        entry.polling = False
        if self._entries.get(entry.service) is not entry:
            return
        if entry.again:
            entry.again = False
            self.poke(entry.service)
            return
        if not entry.reserved:
            self._schedule(entry, self._next_due())
            self._arm()

    def _deliver(self, entry: _Entry, callback: WatchCallback) -> None:
        if callback not in entry.callbacks:
            return  # its watch was stopped by an earlier callback
        try:
            callback(list(entry.instances))
        except Exception:
            self.log.failure("watch callback for {service} failed", service=entry.service)

    def _unwatch(self, entry: _Entry, callback: WatchCallback) -> None:
        if callback in entry.callbacks:
            entry.callbacks.remove(callback)
        if not entry.callbacks and self._entries.get(entry.service) is entry:
            del self._entries[entry.service]
            if entry.failing:
                entry.failing = False
                self._failing -= 1
            self._arm()


__all__ = ["SharedPolls", "Reservations"]
