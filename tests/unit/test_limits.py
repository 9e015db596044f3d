"""Request limits: SQL length and a token bucket per caller, with the refusal's details."""

from __future__ import annotations

import pytest

from dataisland.errors import ResourceLimitError
from dataisland.limits import RateLimiter, check_sql_length


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sql_at_the_limit_passes_and_one_byte_more_is_refused_naming_the_setting() -> None:
    check_sql_length("x" * 100, limit=100)
    with pytest.raises(ResourceLimitError) as info:
        check_sql_length("é" * 51, limit=100)  # 102 bytes of UTF-8
    assert "102 bytes" in str(info.value)
    assert "max_sql_bytes" in str(info.value)
    assert info.value.code == "RESOURCE_EXHAUSTED"
    assert info.value.limit == "max_sql_bytes"


def test_a_burst_then_the_sustained_rate_then_refusal_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(ResourceLimitError) as info:
        limiter.take("a")
    assert info.value.subject == "a"
    assert info.value.retry_after == pytest.approx(0.5)
    assert "rate_per_caller" in str(info.value)
    limiter.take("b")  # another caller has its own bucket
    clock.now += 0.5
    limiter.take("a")
    with pytest.raises(ResourceLimitError):
        limiter.take("a")


def test_idle_callers_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=5, clock=clock)
    for i in range(100):
        limiter.take(f"caller-{i}")
    assert len(limiter) == 100
    clock.now += 1.0
    limiter.take("fresh")
    assert len(limiter) == 1


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0, burst=1, clock=Clock())
