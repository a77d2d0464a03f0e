"""
Lookups that a watch following them can start from.

A client resolves a service (a lookup), then watches it; a registry that remembers the
lookup for a few seconds spares the watch listing the same thing again (a thousand
services resolved cold: a thousand requests fewer).
"""

from __future__ import annotations

from typing import Generic, Optional, TypeVar

from twisted.internet.interfaces import IReactorTime

T = TypeVar("T")

#: How long a lookup is worth starting a watch from ...
KEEP_FOR = 10.0
#: ... and how many are kept at most (older ones go first).
MOST = 10_000


class RecentLookups(Generic[T]):
    """service → its last lookup, for ``keep_for`` seconds, taken once."""

    def __init__(self, clock: IReactorTime, keep_for: float = KEEP_FOR,
                 most: int = MOST) -> None:
        self.clock = clock
        self.keep_for = keep_for
        self.most = most
        self._kept: dict[str, tuple[float, T]] = {}

    def remember(self, service: str, value: T) -> None:
        now = self.clock.seconds()
        if len(self._kept) >= self.most:
            self._kept = {s: kept for s, kept in self._kept.items()
                          if now - kept[0] < self.keep_for}
        if len(self._kept) < self.most:
            self._kept[service] = (now, value)

    def take(self, service: str) -> Optional[T]:
        """The lookup of ``service`` if it is recent enough (and forget it)."""
        kept = self._kept.pop(service, None)
        if kept is None or self.clock.seconds() - kept[0] >= self.keep_for:
            return None
        return kept[1]

    def clear(self) -> None:
        self._kept.clear()


__all__ = ["RecentLookups", "KEEP_FOR"]
