"""The dynamic batcher: merging, limits, failure isolation, the one-output-per-input contract."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from modelbay.errors import InferenceFailed, InvalidInput, Overloaded
from modelbay.runtime.batcher import BACKGROUND, BACKGROUND_NICE, Batcher
from modelbay.settings import BatchingConfig

pytestmark = pytest.mark.anyio


class Recorder:
    """A predict function that squares numbers and records every batch it was given."""

    def __init__(self, fail_on: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.fail_on = fail_on

    def __call__(self, batch: list[Any]) -> list[Any]:
        self.batches.append(list(batch))
        if self.fail_on is not None and self.fail_on in batch:
            raise ValueError(f"cannot take {self.fail_on}")
        return [x * x for x in batch]


async def run_all(batcher: Batcher, items: list[Any]) -> list[Any]:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)
    finally:
        await batcher.stop()


async def test_concurrent_requests_share_forward_passes_and_get_their_own_answers() -> None:
    predict = Recorder()
    batcher = Batcher(predict, BatchingConfig(max_batch_size=8, max_queue_delay_ms=50))
    results = await run_all(batcher, list(range(20)))
    assert results == [x * x for x in range(20)]
    assert [len(b) for b in predict.batches] == [8, 8, 4]
    assert batcher.stats.batches == 3 and batcher.stats.items == 20


async def test_a_batch_never_exceeds_max_batch_size_in_rows() -> None:
    sizes: list[int] = []

    def predict(batch: list[list[int]]) -> list[int]:
        sizes.append(sum(len(item) for item in batch))
        return [len(item) for item in batch]

    batcher = Batcher(predict, BatchingConfig(max_batch_size=5, max_queue_delay_ms=20), rows=len)
    items = [[0] * n for n in (3, 2, 4, 1, 5, 2)]
    assert await run_all(batcher, items) == [3, 2, 4, 1, 5, 2]
    assert max(sizes) <= 5 and sum(sizes) == 17


async def test_request_with_more_rows_than_max_batch_size_is_invalid() -> None:
    batcher = Batcher(Recorder(), BatchingConfig(max_batch_size=4), rows=len, name="mlp")
    (result,) = await run_all(batcher, [[1] * 5])
    assert isinstance(result, InvalidInput)
    assert "request has 5 rows; model 'mlp' takes 1 to 4 (max_batch_size)" in result.message


async def test_a_bad_item_fails_alone_and_the_rest_of_its_batch_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    predict = Recorder(fail_on=3)
    batcher = Batcher(predict, BatchingConfig(max_batch_size=8, max_queue_delay_ms=50), name="sq")
    results = await run_all(batcher, [1, 2, 3, 4])
    assert results[:2] == [1, 4] and results[3] == 16
    assert isinstance(results[2], InferenceFailed)
    # The client learns that the model failed and the error id; the exception text is only logged.
    assert results[2].message.startswith("model 'sq' failed (error id ")
    assert "cannot take 3" not in results[2].message
    assert results[2].error_id and results[2].error_id in results[2].message
    assert any(
        results[2].error_id in record.getMessage() and "cannot take 3" in str(record.exc_info)
        for record in caplog.records
    )
    # Tried together first, then split in halves: [1, 2] succeeds, [3, 4] fails and splits again.
    assert predict.batches == [[1, 2, 3, 4], [1, 2], [3, 4], [3], [4]]
    assert batcher.stats.failed == 1 and batcher.stats.batches == 5


async def test_predict_returning_the_wrong_number_of_outputs_fails_the_batch() -> None:
    batcher = Batcher(lambda batch: batch[:-1], BatchingConfig(max_batch_size=1))
    (result,) = await run_all(batcher, [7])
    assert isinstance(result, InferenceFailed)
    assert "model 'model' failed (error id" in result.message


async def test_full_queue_is_refused_at_once_with_overloaded() -> None:
    release = threading.Event()
    inside = threading.Event()

    def slow(batch: list[int]) -> list[int]:
        inside.set()
        release.wait(timeout=10)
        return batch

    batcher = Batcher(slow, BatchingConfig(max_batch_size=1, max_queue_size=2))
    batcher.start()
    try:
        running = asyncio.ensure_future(batcher.submit(0))
        assert await asyncio.to_thread(inside.wait, 10)  # item 0 is inside predict; the queue is empty
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match=r"2 requests queued \(max_queue_size 2\)"):
            await batcher.submit(3)
        release.set()
        assert await asyncio.gather(running, *queued) == [0, 1, 2]
    finally:
        release.set()
        await batcher.stop()


async def test_requests_whose_caller_has_gone_are_skipped() -> None:
    release = threading.Event()
    inside = threading.Event()
    seen: list[int] = []

    def predict(batch: list[int]) -> list[int]:
        inside.set()
        release.wait(timeout=10)
        seen.extend(batch)
        return batch

    batcher = Batcher(predict, BatchingConfig(max_batch_size=1))
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(1))
        assert await asyncio.to_thread(inside.wait, 10)
        abandoned = asyncio.ensure_future(batcher.submit(2))
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0)
        abandoned.cancel()
        release.set()
        assert await first == 1 and await kept == 3
        assert seen == [1, 3]
    finally:
        release.set()
        await batcher.stop()


async def test_delay_zero_batches_what_is_queued_while_the_model_is_busy() -> None:
    predict = Recorder()
    batcher = Batcher(predict, BatchingConfig(max_batch_size=16, max_queue_delay_ms=0))
    results = await run_all(batcher, list(range(10)))
    assert results == [x * x for x in range(10)]
    assert len(predict.batches) < 10


async def test_a_full_batch_runs_at_once_without_waiting_out_the_queue_delay() -> None:
    predict = Recorder()
    batcher = Batcher(predict, BatchingConfig(max_batch_size=4, max_queue_delay_ms=60_000))
    results = await asyncio.wait_for(run_all(batcher, [1, 2, 3, 4]), timeout=10)
    assert results == [1, 4, 9, 16]
    assert predict.batches == [[1, 2, 3, 4]]


async def test_the_queue_delay_closes_a_partial_batch_and_late_arrivals_form_the_next() -> None:
    predict = Recorder()
    batcher = Batcher(predict, BatchingConfig(max_batch_size=8, max_queue_delay_ms=20))
    batcher.start()
    try:
        first = [asyncio.ensure_future(batcher.submit(x)) for x in (1, 2, 3)]
        assert await asyncio.wait_for(asyncio.gather(*first), timeout=10) == [1, 4, 9]
        assert await asyncio.wait_for(batcher.submit(5), timeout=10) == 25
    finally:
        await batcher.stop()
    assert predict.batches == [[1, 2, 3], [5]]


async def two_waves(
    batcher: Batcher, first: list[int], late: list[int], answered: list[int] | None = None
) -> list[Any]:
    """Run `answered` as one batch (clients the batcher then expects back), submit `first`, let the
    batcher wait on them for 50 ms, submit `late`; the outputs of `first` and `late` in order."""
    batcher.start()
    try:
        if answered:
            await asyncio.wait_for(asyncio.gather(*(batcher.submit(x) for x in answered)), timeout=10)
        waves = [asyncio.ensure_future(batcher.submit(x)) for x in first]
        await asyncio.sleep(0.05)
        waves += [asyncio.ensure_future(batcher.submit(x)) for x in late]
        return await asyncio.wait_for(asyncio.gather(*waves), timeout=10)
    finally:
        await batcher.stop()


async def test_under_an_slo_a_short_batch_stays_open_while_requests_keep_arriving() -> None:
    # Two halves of closed-loop clients taking turns would otherwise never fill a batch.
    predict = Recorder()
    batcher = Batcher(predict, BatchingConfig(max_batch_size=8, slo_ms=60_000))
    assert batcher.adaptive is not None
    batcher.adaptive.limit = 8
    batcher.arrival_gap_s = 0.5  # generous: the two waves are 50 ms apart
    # the last batch answered five clients: wait while they come back
    assert await two_waves(batcher, [1, 2], [3, 4, 5], answered=[6, 7, 8, 9, 10]) == [1, 4, 9, 16, 25]
    assert predict.batches == [[6, 7, 8, 9, 10], [1, 2, 3, 4, 5]]


async def test_under_an_slo_a_short_batch_runs_once_the_clients_answered_are_back() -> None:
    predict = Recorder()
    batcher = Batcher(predict, BatchingConfig(max_batch_size=8, slo_ms=60_000))
    assert batcher.adaptive is not None
    batcher.adaptive.limit = 8
    batcher.arrival_gap_s = 0.5
    # two answered, two back: no reason to wait for the late wave
    assert await two_waves(batcher, [1, 2], [3, 4, 5], answered=[6, 7]) == [1, 4, 9, 16, 25]
    assert predict.batches[:2] == [[6, 7], [1, 2]]


async def test_without_an_slo_a_short_batch_runs_once_its_queue_delay_is_over() -> None:
    predict = Recorder()
    batcher = Batcher(predict, BatchingConfig(max_batch_size=8, max_queue_delay_ms=0))
    assert await two_waves(batcher, [1, 2], [3, 4, 5]) == [1, 4, 9, 16, 25]
    assert predict.batches[0] == [1, 2]


async def test_background_batches_run_on_a_thread_of_the_lowest_cpu_priority() -> None:
    """Shadow calls (BACKGROUND set in their task) run their batches on their own thread, of
    Linux's SCHED_IDLE policy (and nice 19); a batch holding any other request runs on the model's
    thread, as before."""
    seen: list[tuple[list[str], str, int, int]] = []

    def predict(batch: list[str]) -> list[str]:
        thread = threading.get_native_id()
        name = threading.current_thread().name
        seen.append(
            (list(batch), name, os.sched_getscheduler(thread), os.getpriority(os.PRIO_PROCESS, thread))
        )
        return batch

    batcher = Batcher(predict, BatchingConfig(max_queue_delay_ms=20.0), name="m")
    batcher.start()

    async def in_background(item: str) -> Any:
        BACKGROUND.set(True)
        return await batcher.submit(item)

    try:
        assert await asyncio.create_task(in_background("shadow")) == "shadow"
        assert await batcher.submit("served") == "served"
        mixed = await asyncio.gather(asyncio.create_task(in_background("s")), batcher.submit("c"))
        assert mixed == ["s", "c"]
    finally:
        await batcher.stop()
    normal = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    assert seen == [
        (["shadow"], "modelbay-m-background-0", os.SCHED_IDLE, BACKGROUND_NICE),
        (["served"], "modelbay-m-0", *normal),
        (["s", "c"], "modelbay-m-0", *normal),
    ]
