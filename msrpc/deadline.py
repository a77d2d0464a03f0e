"""
Many deadlines, one timer.

A ``DelayedCall`` per call costs a heap push and pop in the reactor for every call; at tens
of thousands of calls per second that is most of the budget.  ``Deadlines`` keeps each
entry's deadline in a dict (O(1) add and discard) and arms a single timer for the earliest
deadline it knows of.  When the timer fires it expires what is due and re-arms for the
next; entries that finished in time were simply discarded.  With the usual uniform
timeout the timer fires about once per timeout period, whatever the call rate.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, Iterator, Optional, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    log = Logger()
    __slots__ = ("_clock", "_on_expire", "_entries", "_timer", "_timer_at")

    def __init__(self, clock: IReactorTime, on_expire: Callable[[K], None]) -> None:
        self._clock = clock
        self._on_expire = on_expire
        self._entries: dict[K, float] = {}
        self._timer: Optional[IDelayedCall] = None
        self._timer_at = float("inf")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys waiting for their deadline (a copy: safe to discard while iterating)."""
        return iter(list(self._entries))

    def add(self, key: K, deadline: float) -> None:
        """Expire ``key`` at ``deadline`` (clock seconds) unless discarded first."""
        self._entries[key] = deadline
        if deadline < self._timer_at:
            self._arm(deadline)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = float("inf")

    def _arm(self, deadline: float) -> None:
        delay = max(0.0, deadline - self._clock.seconds())
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._fire)
        self._timer_at = deadline

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self._clock.seconds()
        entries = self._entries
        due = [key for key, deadline in entries.items() if deadline <= now]
        for key in due:
            del entries[key]
        if entries:
            self._arm(min(entries.values()))
        for key in due:
            try:
                self._on_expire(key)
            except Exception:
                self.log.failure("deadline handler failed for {key!r}", key=key)
