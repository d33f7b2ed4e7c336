"""Adaptive batching against an SLO (Clipper's AIMD): the limit moves the right way."""

from __future__ import annotations

import asyncio

import pytest

from modelbay.runtime.adaptive import AdaptiveBatchSize
from modelbay.runtime.batcher import Batcher
from modelbay.settings import BatchingConfig


def test_full_batches_within_the_budget_grow_the_limit_one_step_at_a_time() -> None:
    control = AdaptiveBatchSize(slo_ms=50, max_batch_size=8)
    assert control.batch_budget_s == 0.025
    limits = []
    for _ in range(10):
        control.observe(rows=control.limit, inference_s=0.010)
        limits.append(control.limit)
    assert limits == [2, 3, 4, 5, 6, 7, 8, 8, 8, 8]


def test_a_batch_over_half_the_slo_cuts_the_limit() -> None:
    control = AdaptiveBatchSize(slo_ms=50, max_batch_size=64, backoff=0.5)
    control.limit = 40
    control.observe(rows=40, inference_s=0.030)
    assert control.limit == 20
    for _ in range(10):
        control.observe(rows=control.limit, inference_s=0.030)
    assert control.limit == 1  # never below one


def test_the_limit_settles_where_a_batch_fits_the_budget() -> None:
    control = AdaptiveBatchSize(slo_ms=40, max_batch_size=256)
    for _ in range(2000):  # a model that takes 1 ms per row: the budget (20 ms) fits ~20 rows
        control.observe(rows=control.limit, inference_s=0.001 * control.limit)
    assert 15 <= control.limit <= 21


def test_batches_below_the_limit_teach_nothing_about_size() -> None:
    control = AdaptiveBatchSize(slo_ms=50, max_batch_size=64)
    control.limit = 10
    control.observe(rows=3, inference_s=0.001)
    assert control.limit == 10


def test_queue_delay_leaves_room_for_two_batches_within_the_slo() -> None:
    control = AdaptiveBatchSize(slo_ms=20, max_batch_size=64)
    assert control.queue_delay_s(0.005) == 0.005
    control.observe(rows=1, inference_s=0.009)
    assert control.queue_delay_s(0.005) == pytest.approx(0.002)
    control.observe(rows=1, inference_s=0.050)
    assert control.queue_delay_s(0.005) == 0.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveBatchSize(slo_ms=0, max_batch_size=8)
    with pytest.raises(ValueError):
        AdaptiveBatchSize(slo_ms=10, max_batch_size=8, backoff=1.5)


@pytest.mark.anyio
async def test_batcher_under_a_generous_slo_grows_batches_from_one() -> None:
    sizes: list[int] = []

    def predict(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return batch

    batcher = Batcher(predict, BatchingConfig(max_batch_size=16, slo_ms=10_000))
    assert batcher.batch_limit == 1
    batcher.start()
    try:
        for _ in range(5):
            assert await asyncio.gather(*(batcher.submit(i) for i in range(40))) == list(range(40))
    finally:
        await batcher.stop()
    assert sizes[0] == 1 and max(sizes) > 1 and batcher.batch_limit > 1
    assert max(sizes) <= 16


@pytest.mark.anyio
async def test_a_request_larger_than_the_adaptive_limit_still_runs() -> None:
    batcher = Batcher(
        lambda batch: [len(x) for x in batch], BatchingConfig(max_batch_size=8, slo_ms=100), rows=len
    )
    batcher.start()
    try:
        assert await batcher.submit([0] * 6) == 6  # limit is 1, the request has 6 rows
    finally:
        await batcher.stop()
