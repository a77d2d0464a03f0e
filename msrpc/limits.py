"""Server-side admission: a token bucket rate limiter (msgo's code 700 when empty)."""

from __future__ import annotations


class TokenBucket:
    """
    ``rate`` tokens per second, at most ``burst`` saved up.  ``try_acquire(now)`` takes the
    caller's clock reading so one reading serves the limiter and the deadline check.
    """

    __slots__ = ("rate", "burst", "_tokens", "_updated")

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self._tokens = self.burst
        self._updated = now

    def try_acquire(self, now: float) -> bool:
        tokens = self._tokens
        elapsed = now - self._updated
        if tokens < self.burst and elapsed > 0:
            tokens = min(self.burst, tokens + elapsed * self.rate)
        self._updated = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


def parse_rate(spec: str) -> tuple[float, float | None]:
    """``"1000"`` or ``"1000/200"`` (rate per second / burst) → (rate, burst)."""
    rate, _, burst = spec.partition("/")
    try:
        return float(rate), (float(burst) if burst else None)
    except ValueError:
        raise ValueError(f"rate limit must look like 1000 or 1000/200, got {spec!r}") from None
