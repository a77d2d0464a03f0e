"""
Outlier ejection: an instance with consecutive connect failures or timeouts is taken out
of rotation for a growing interval, then let back in on probation (one more failure and
it is out again, for longer).  The last callable instance of a service is never ejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from msrpc.observe import IClientObserver

if TYPE_CHECKING:
    from msrpc.pool import Endpoint
    from msrpc.resolver import Resolver


@dataclass(frozen=True)
class EjectionPolicy:
    enabled: bool = True
    #: Connect failures or timeouts in a row that eject an instance.
    consecutive_failures: int = 3
    #: First ejection lasts this long; each further one doubles it, up to ``max_ejection``.
    base_ejection: float = 2.0
    max_ejection: float = 60.0


class Health:
    log = Logger()

    def __init__(self, clock: IReactorTime, resolver: "Resolver", policy: EjectionPolicy,
                 observer: Optional[IClientObserver] = None) -> None:
        self.clock = clock
        self.resolver = resolver
        self.policy = policy
        self.observer = observer
        self._timers: dict["Endpoint", IDelayedCall] = {}

    def success(self, endpoint: "Endpoint") -> None:
        endpoint.strikes = 0
        if endpoint.probation:
            endpoint.probation = False
            endpoint.ejections = 0
            self.log.info("{address} is healthy again", address=endpoint.address)

    def failure(self, endpoint: "Endpoint", error: Any) -> None:
        if not self.policy.enabled:
            return
        endpoint.strikes += 1
        threshold = 1 if endpoint.probation else self.policy.consecutive_failures
        if endpoint.strikes >= threshold and endpoint.ejected_until <= self.clock.seconds():
            self.eject(endpoint, error)

    def eject(self, endpoint: "Endpoint", error: Any = None) -> bool:
        views = self.resolver.views_with(endpoint)
        now = self.clock.seconds()
        for view in views:
            others = [m for m in view.members
                      if m.endpoint is not endpoint and m.endpoint.ejected_until <= now]
            if not others:
                return False  # never eject the last callable instance of a service
        duration = min(self.policy.max_ejection,
                       self.policy.base_ejection * (2 ** endpoint.ejections))
        endpoint.ejections += 1
        endpoint.strikes = 0
        endpoint.probation = False
        endpoint.ejected_until = now + duration
        self.log.warn("ejecting {address} for {duration:g}s after {error}",
                      address=endpoint.address, duration=duration,
                      error=getattr(error, "message", None) or error.__class__.__name__)
        for view in views:
            view.refresh()
            if self.observer is not None:
                self.observer.instance_ejected(view.service, endpoint.address, duration)
        old = self._timers.pop(endpoint, None)
        if old is not None and old.active():
            old.cancel()
        self._timers[endpoint] = self.clock.callLater(duration, self._readmit, endpoint)
        return True

    def _readmit(self, endpoint: "Endpoint") -> None:
        self._timers.pop(endpoint, None)
        endpoint.probation = True
        endpoint.retry_at = 0.0  # let the probe connect at once
        for view in self.resolver.views_with(endpoint):
            view.refresh()

    def stop(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
