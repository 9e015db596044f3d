"""Configured limits on what one caller may ask: SQL length and call rate.

Each refusal is a `ResourceLimitError` (RESOURCE_EXHAUSTED) whose message names the limit, the
value asked for and the configuration setting, and whose `retry_after` says when waiting helps.
The limits here are about requests; limits on released results live in the aggregator, and
never apply to partials (DESIGN.md: a limit that trips on one person's rows would leak them).

Pure: the clock is passed in; nothing here does I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from dataisland.errors import ResourceLimitError


def check_sql_length(sql: str, *, limit: int) -> None:
    """Refuse SQL longer than `limit` bytes of UTF-8 before anything parses it.

    Raises:
        ResourceLimitError: naming both lengths and the setting `max_sql_bytes`.
    """
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ResourceLimitError(
            f"the SQL is {size} bytes, more than the {limit} this node accepts (max_sql_bytes)",
            limit="max_sql_bytes",
            subject="the SQL text",
        )


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per caller: `rate` calls a second sustained, `burst` at once; thread-safe.

    Buckets of callers idle long enough to be full again are dropped, so memory stays bounded
    by the callers active in the last `burst / rate` seconds.
    """

    def __init__(self, *, rate: float, burst: int, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._swept = clock()

    def take(self, caller: str) -> None:
        """Spend one call of `caller`'s.

        Raises:
            ResourceLimitError: the caller's bucket is empty; `retry_after` is when one call is
                available again.
        """
        now = self.clock()
        with self._lock:
            self._sweep(now)
            bucket = self._buckets.get(caller)
            if bucket is None:
                bucket = self._buckets[caller] = _Bucket(tokens=float(self.burst), updated=now)
            bucket.tokens = min(
                float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate
            )
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / self.rate
                raise ResourceLimitError(
                    f"{caller} is calling faster than {self.rate:g} calls a second "
                    f"(bursts of {self.burst}; rate_per_caller, rate_burst); "
                    f"retry in {wait:.2f}s",
                    limit="rate_per_caller",
                    subject=caller,
                    retry_after=wait,
                )
            bucket.tokens -= 1.0

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        if now - self._swept < full_after:
            return
        self._swept = now
        for caller in [c for c, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[caller]

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)
