"""
A steady, bounded load on a ``Client`` that records what became of every call.

``Load`` starts calls at a fixed rate with a cap on how many are in flight, each with its
own deadline, and keeps one ``Outcome`` per call: when it started and finished, the error
class if it failed, whether it was idempotent.  ``Load.run()`` fires with a ``Report``
once every call it started has finished, or, for a call that never finishes, once its
deadline is long past: such a call is *lost* (its Deferred never fired).

Used by the process-level resilience tests and by ``scripts/chaos``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet import task
from twisted.internet.task import LoopingCall

from msrpc.client import Client
from msrpc.loadgen import nearest_rank
from msrpc.errors import (
    BadRequest, CallTimeout, ConnectError, ConnectionLost, DeadlineExceeded, NoInstances,
    NotFound, RateLimited, RemoteError, Unauthorized, Unavailable,
)

#: The errors a caller may see, as documented in DESIGN.md section 4.  Anything else
#: escaping a call is a bug.
DOCUMENTED_ERRORS: tuple[type[BaseException], ...] = (
    BadRequest, Unauthorized, NotFound, DeadlineExceeded, RemoteError, Unavailable,
    RateLimited, NoInstances, ConnectError, CallTimeout, ConnectionLost,
)

#: Seconds a call may finish after its deadline before it counts as late (timer and
#: scheduling jitter of a busy machine).
DEFAULT_SLACK = 0.25


@dataclass(frozen=True)
class CallSpec:
    """One call to make: ``service.method(*args, **kwargs)``."""

    service: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    idempotent: bool = False


@dataclass
class Outcome:
    spec: CallSpec
    started: float
    finished: Optional[float] = None
    error: Optional[BaseException] = None
    #: The Deferred never fired before the load gave up waiting for it.
    lost: bool = False

    @property
    def latency(self) -> Optional[float]:
        return None if self.finished is None else self.finished - self.started

    @property
    def error_class(self) -> Optional[str]:
        return None if self.error is None else type(self.error).__name__

    @property
    def documented(self) -> bool:
        return self.error is None or type(self.error) in DOCUMENTED_ERRORS


@dataclass
class Report:
    """What happened to the calls of one load run."""

    outcomes: list[Outcome]
    timeout: float
    slack: float
    retries: int
    duration: float

    @property
    def made(self) -> int:
        return len(self.outcomes)

    @property
    def finished(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.lost]

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.finished if o.error is None)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.finished if o.error is not None]

    @property
    def failed_by_class(self) -> Counter[str]:
        return Counter(o.error_class for o in self.failures)  # type: ignore[misc]

    @property
    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.lost]

    @property
    def late(self) -> list[Outcome]:
        """Calls that finished later than their deadline plus the slack."""
        limit = self.timeout + self.slack
        return [o for o in self.finished if o.latency is not None and o.latency > limit]

    @property
    def undocumented(self) -> list[Outcome]:
        return [o for o in self.failures if not o.documented]

    @property
    def idempotent_failures(self) -> list[Outcome]:
        return [o for o in self.failures if o.spec.idempotent]

    @property
    def max_latency(self) -> float:
        return max((o.latency for o in self.finished if o.latency is not None), default=0.0)

    def percentile(self, p: float) -> float:
        latencies = sorted(o.latency for o in self.finished if o.latency is not None)
        return nearest_rank(latencies, p) if latencies else 0.0

    def problems(self) -> list[str]:
        """Why this run is not clean: lost, late, undocumented or idempotent failures."""
        found = []
        for name, bad in (("lost (never finished)", self.lost),
                          ("finished past deadline + slack", self.late),
                          ("failed with an undocumented error", self.undocumented),
                          ("idempotent calls failed", self.idempotent_failures)):
            if bad:
                examples = "; ".join(_describe(o) for o in bad[:3])
                found.append(f"{len(bad)} {name}: {examples}")
        return found

    def summary(self) -> str:
        """One line: made/succeeded/failed/retried and the latency extremes."""
        failed = ", ".join(f"{name}={n}" for name, n in sorted(self.failed_by_class.items()))
        idempotent = sum(1 for o in self.outcomes if o.spec.idempotent)
        return (f"calls={self.made} (idempotent={idempotent}) succeeded={self.succeeded} "
                f"failed={len(self.failures)}{' [' + failed + ']' if failed else ''} "
                f"retried={self.retries} lost={len(self.lost)} late={len(self.late)} "
                f"idempotent_failed={len(self.idempotent_failures)} "
                f"p50={self.percentile(50) * 1000:.1f}ms "
                f"p99={self.percentile(99) * 1000:.1f}ms "
                f"max_latency={self.max_latency * 1000:.1f}ms "
                f"in {self.duration:.1f}s")


def _describe(outcome: Outcome) -> str:
    spec = outcome.spec
    what = f"{spec.service}.{spec.method}{' (idempotent)' if spec.idempotent else ''}"
    latency = f" after {outcome.latency:.3f}s" if outcome.latency is not None else ""
    error = f": {outcome.error_class}: {outcome.error}" if outcome.error is not None else ""
    return f"{what} started at +{outcome.started:.3f}{latency}{error}"


class Load:
    """
    Starts ``make_call(i)`` for i = 0, 1, ... at ``rate`` calls per second, at most
    ``max_in_flight`` at once (calls due while the cap is reached start as soon as a slot
    frees), each with deadline ``timeout``.  It stops starting calls after ``count`` calls
    or ``duration`` seconds (or ``stop()``), whichever comes first.
    """

    def __init__(self, reactor: Any, client: Client, make_call: Callable[[int], CallSpec], *,
                 rate: float, timeout: float, max_in_flight: int = 16,
                 count: Optional[int] = None, duration: Optional[float] = None,
                 slack: float = DEFAULT_SLACK, tick: float = 0.01) -> None:
        if count is None and duration is None:
            raise ValueError("a load needs a count or a duration")
        self.reactor = reactor
        self.client = client
        self.make_call = make_call
        self.rate = rate
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.count = count
        self.duration = duration
        self.slack = slack
        self.outcomes: list[Outcome] = []
        self.in_flight = 0
        self._tick = tick
        self._loop = LoopingCall(self._start_due)
        self._loop.clock = reactor
        self._t0 = 0.0
        self._stopped = False
        self._retries0 = 0

    @property
    def started(self) -> int:
        return len(self.outcomes)

    def elapsed(self) -> float:
        return self.reactor.seconds() - self._t0

    def run(self) -> "Deferred[Report]":
        """Start the load; fires with the report once it is over."""
        self._t0 = self.reactor.seconds()
        self._retries0 = self.client.stats["retries"]
        self._loop.start(self._tick, now=True)
        return Deferred.fromCoroutine(self._finish())

    def stop(self) -> None:
        """Start no more calls (those in flight still finish)."""
        self._stopped = True
        if self._loop.running:
            self._loop.stop()

    def _start_due(self) -> None:
        elapsed = self.elapsed()
        if self.duration is not None and elapsed >= self.duration:
            self.stop()
            return
        due = int(elapsed * self.rate) + 1
        if self.count is not None:
            due = min(due, self.count)
        while self.started < due and self.in_flight < self.max_in_flight:
            self._start_one()
        if self.count is not None and self.started >= self.count:
            self.stop()

    def _start_one(self) -> None:
        spec = self.make_call(self.started)
        outcome = Outcome(spec, started=self.elapsed())
        self.outcomes.append(outcome)
        self.in_flight += 1
        try:
            d = self.client.invoke(spec.service, spec.method, spec.args, spec.kwargs,
                                   timeout=self.timeout, idempotent=spec.idempotent)
        except Exception:
            d = defer.fail()
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(outcome,),
                       errbackArgs=(outcome,))

    def _succeeded(self, result: Any, outcome: Outcome) -> None:
        self._done(outcome, None)

    def _failed(self, failure: Any, outcome: Outcome) -> None:
        self._done(outcome, failure.value)

    def _done(self, outcome: Outcome, error: Optional[BaseException]) -> None:
        if outcome.lost or outcome.finished is not None:
            return  # given up on already: it stays lost
        outcome.finished = self.elapsed()
        outcome.error = error
        self.in_flight -= 1

    async def _finish(self) -> Report:
        # Poll rather than chain: the end of a run need not be exact to the millisecond.
        while not (self._stopped and self.in_flight == 0):
            if self._stopped and self._overdue():
                break
            await task.deferLater(self.reactor, 0.05, lambda: None)
        for outcome in self.outcomes:
            if outcome.finished is None:
                outcome.lost = True
        return Report(self.outcomes, self.timeout, self.slack,
                      self.client.stats["retries"] - self._retries0, self.elapsed())

    def _overdue(self) -> bool:
        """A call still pending well past its deadline: give up on it (it is lost)."""
        oldest = min(o.started for o in self.outcomes if o.finished is None)
        return self.elapsed() > oldest + self.timeout + max(1.0, 4 * self.slack)


__all__ = ["CallSpec", "Outcome", "Report", "Load", "DOCUMENTED_ERRORS", "DEFAULT_SLACK"]
