"""The prediction cache: hits, LRU eviction, TTL on a fake clock, in-flight sharing, no cached failures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from modelbay.runtime.cache import PredictionCache, request_key

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value: object, delay_s: float = 0.0):  # type: ignore[no-untyped-def]
        async def compute() -> object:
            self.calls += 1
            await asyncio.sleep(delay_s)
            return value

        return compute


async def test_second_identical_request_is_a_hit() -> None:
    cache, compute = PredictionCache(8), Counting()
    assert await cache.get_or_compute(b"k", compute("a")) == ("a", False)
    assert await cache.get_or_compute(b"k", compute("b")) == ("a", True)
    assert compute.calls == 1


async def test_least_recently_used_entry_leaves_first() -> None:
    cache, compute = PredictionCache(2), Counting()
    for key in (b"a", b"b"):
        await cache.get_or_compute(key, compute(key))
    await cache.get_or_compute(b"a", compute("unused"))  # touch a: b is now the oldest
    await cache.get_or_compute(b"c", compute(b"c"))
    assert len(cache) == 2
    assert (await cache.get_or_compute(b"a", compute("x")))[1] is True
    assert (await cache.get_or_compute(b"b", compute("x")))[1] is False


async def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache, compute = PredictionCache(8, ttl_s=10, clock=clock), Counting()
    await cache.get_or_compute(b"k", compute(1))
    clock.now += 9.9
    assert await cache.get_or_compute(b"k", compute(2)) == (1, True)
    clock.now += 0.2
    assert await cache.get_or_compute(b"k", compute(3)) == (3, False)


async def test_identical_requests_in_flight_are_computed_once() -> None:
    cache, compute = PredictionCache(8), Counting()
    results = await asyncio.gather(*(cache.get_or_compute(b"k", compute("v", 0.05)) for _ in range(5)))
    assert compute.calls == 1
    assert [value for value, _ in results] == ["v"] * 5
    assert sorted(hit for _, hit in results) == [False, True, True, True, True]


async def test_failures_are_not_cached_and_reach_every_waiter() -> None:
    cache = PredictionCache(8)
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ValueError("model broke")

    results = await asyncio.gather(
        *(cache.get_or_compute(b"k", failing) for _ in range(3)), return_exceptions=True
    )
    assert calls == 1 and all(isinstance(r, ValueError) for r in results)
    with pytest.raises(ValueError):
        await cache.get_or_compute(b"k", failing)
    assert calls == 2 and len(cache) == 0


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    cache, compute = PredictionCache(8), Counting()
    first = asyncio.ensure_future(cache.get_or_compute(b"k", compute("v", 0.05)))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(cache.get_or_compute(b"k", compute("w")))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == ("v", True)
    assert (await cache.get_or_compute(b"k", compute("z")))[0] == "v"


def test_request_key_tells_apart_what_changes_the_answer() -> None:
    x = np.arange(6, dtype=np.float32)
    keys = {
        request_key(["infer", "x", x]),
        request_key(["infer", "x", x.astype(np.float64)]),
        request_key(["infer", "x", x.reshape(2, 3)]),
        request_key(["infer", "y", x]),
        request_key(["predict", b"\x00\x01"]),
        request_key(["predict", [0, 1]]),
        request_key(["infer", "t", np.array([b"ab", b"c"], dtype=object)]),
        request_key(["infer", "t", np.array([b"a", b"bc"], dtype=object)]),
    }
    assert len(keys) == 8
    assert request_key(["infer", "x", x]) == request_key(["infer", "x", x.copy()])
