"""A per-key request-rate limit: a token bucket (the key file's `rate_per_s` and `burst`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    """`burst` tokens at most, refilled at `rate_per_s` tokens a second; a request takes one.

    So a key may send `burst` requests at once, then `rate_per_s` a second on average. Time comes
    from `clock` (seconds, monotonic; injected so tests move it instead of sleeping). Not
    thread-safe: every door calls it from the server's event loop.
    """

    __slots__ = ("burst", "clock", "rate_per_s", "tokens", "updated")

    def __init__(
        self, rate_per_s: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else max(1, math.ceil(rate_per_s))
        self.clock = clock
        self.tokens = float(self.burst)
        self.updated = clock()

    def take(self) -> float:
        """Take a token for one request: 0.0 when there was one, else the seconds until there will
        be (> 0; nothing is taken, so a refused request costs the key nothing)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s
