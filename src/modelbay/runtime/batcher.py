"""Dynamic batching: merge concurrent requests to one model into one `predict` call.

The rules follow Triton's dynamic batcher (`max_batch_size`, `max_queue_delay_ms`, `max_queue_size`)
and the contract of Ray Serve's `@serve.batch`: `predict` gets a list and must return exactly one
output per element, in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from modelbay.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    WorkerProcessDied,
    model_failure,
)
from modelbay.runtime.adaptive import AdaptiveBatchSize
from modelbay.runtime.context import BATCH_TRACEPARENT, CURRENT, RequestContext
from modelbay.runtime.threads import DaemonThreadPool
from modelbay.settings import BatchingConfig

if TYPE_CHECKING:
    from modelbay.runtime.tracing import BatchTrace, BatchTracing, RequestTrace

# Under an SLO, a batch below the limit stays open while requests arrive at most this far apart.
ARRIVAL_GAP_S = 0.001
# True in work that nobody waits for (a shadow call, runtime/shadow.py): a batch made only of such
# requests runs on the model's background thread, at the lowest CPU priority (`lower_priority`).
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("modelbay_background", default=False)
BACKGROUND_NICE = 19


@dataclass(slots=True, eq=False)
class _Pending:
    item: Any
    rows: int
    future: asyncio.Future[Any]
    enqueued_at: float
    queued: bool = True
    background: bool = False
    context: RequestContext | None = None  # the request it belongs to (its batch size, its trace)


@dataclass(slots=True)
class DefaultOutput:
    """What a request's future holds instead of the model's output when it would have missed its
    SLO: `value` is the predictor's default output for it (`Predictor.default_output`)."""

    value: Any


class BatchObserver(Protocol):
    """Told about every batch the batcher runs (modelbay.metrics.ModelMetrics is one)."""

    def on_batch(self, rows: int, queue_waits_s: list[float], inference_s: float) -> None: ...


@dataclass(slots=True)
class BatcherStats:
    """Counters since start: batches run, items (requests) in them, rows in them, items failed."""

    batches: int = 0
    items: int = 0
    rows: int = 0
    failed: int = 0


class Batcher:
    """Queues items for one model and runs them in batches on the model's own worker thread.

    predict: the model's batch function (`Predictor.predict`): list of items -> list of outputs.
    rows:    rows an item adds to a batch (`Predictor.rows`).
    name:    model name, for log lines and error messages.
    default: with `slo_ms`, the output for an item that would miss the SLO (`Predictor.default_output`):
             before each batch, every queued request whose wait plus the recent batch time would
             pass the SLO gets `DefaultOutput(default(item))` at once and is not run (Clipper's
             `default_output`, set with an application's `slo_micros`). None runs every request.
    A batch closes when it holds `max_batch_size` rows, or when its oldest request has waited
    `max_queue_delay_ms`, or (delay 0) as soon as the queue is empty. With `slo_ms` the row limit
    is the adaptive one (runtime/adaptive.py), the delay is capped by the SLO, and a batch below
    the limit stays open while the clients the last batch answered come back, arriving at most
    `arrival_gap_s` (1 ms) apart, within the SLO's slack. While one batch runs, new requests queue
    up, so batches grow with load. Timing uses `time.monotonic()`; seconds throughout.
    Batches run one at a time: those made only of background requests (submitted where
    `BACKGROUND` is true) on a second thread of the lowest CPU priority, the others on the first.
    """

    def __init__(
        self,
        predict: Callable[[list[Any]], list[Any]],
        config: BatchingConfig,
        *,
        rows: Callable[[Any], int] = lambda _item: 1,
        name: str = "model",
        default: Callable[[Any], Any] | None = None,
    ) -> None:
        self._predict = predict
        self._rows = rows
        self._default = default if config.slo_ms is not None else None
        self.config = config
        self.name = name
        self.stats = BatcherStats()
        self.observer: BatchObserver | None = None
        self.tracer: BatchTracing | None = None  # with --tracing: the spans of its batches
        self.adaptive = (
            AdaptiveBatchSize(config.slo_ms, config.max_batch_size) if config.slo_ms is not None else None
        )
        self.arrival_gap_s = ARRIVAL_GAP_S
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        # Requests the last batch answered, and requests submitted since: in a closed loop the
        # clients just answered come back, and a short batch may wait for them (`_gather_stream`).
        self._answered = 0
        self._arrivals = 0
        # The loop sleeps on `_waiter` until `_wake_at_rows` rows are queued (1 when idle, the batch
        # limit while a batch fills) or a timer fires: one check per arrival, no Task per arrival.
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at_rows = 1
        self._task: asyncio.Task[None] | None = None
        self._executor: DaemonThreadPool | None = None
        self._background: DaemonThreadPool | None = None  # made for the first background batch
        self._running_since: float | None = None  # when the batch now in the model started

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be batched now."""
        return len(self._queue)

    def stalled(self, after_s: float) -> bool:
        """True while one batch has been in the model for more than `after_s` seconds (hung code)."""
        since = self._running_since
        return since is not None and time.monotonic() - since > after_s

    def start(self) -> None:
        """Start the batching loop on the running event loop and the model's worker thread."""
        self._executor = DaemonThreadPool(1, f"modelbay-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop the loop; requests still queued fail with ModelNotReady."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        while self._queue:
            pending = self._queue.popleft()
            pending.queued = False
            if not pending.future.done():
                pending.future.set_exception(ModelNotReady(f"model {self.name!r} is shutting down"))
        self._queued_rows = 0
        for pool in (self._executor, self._background):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._background = None

    async def submit(self, item: Any) -> Any:
        """Queue one item and wait for its output: `submit_many([item])[0]`; raises what it raises."""
        (pending,) = self._enqueue((item,))
        try:
            return await pending.future
        except BaseException:  # failed, or the caller was cancelled: leave the queue
            self._withdraw([pending])
            raise

    async def submit_many(self, items: Sequence[Any]) -> list[Any]:
        """Queue the items of one request together and wait for all their outputs, in order.

        All or nothing: the items are checked before any is queued, and when one fails or the
        caller is cancelled (client gone, deadline passed), the others are withdrawn from the
        queue and never run.
        Raises InvalidInput if an item has no rows or more than `max_batch_size`;
        PayloadTooLarge if there are more items than `max_queue_size` (the model could never
        take them); Overloaded if they do not fit in the queue now; ModelNotReady if the batcher
        is not running; InferenceFailed (or the predictor's own ModelbayError) if the model fails.
        """
        batch = self._enqueue(items)
        try:
            return [await pending.future for pending in batch]
        except BaseException:  # one failed, or the caller was cancelled: the rest must not run
            self._withdraw(batch)
            raise

    def _enqueue(self, items: Sequence[Any]) -> list[_Pending]:
        """Check the items of one request (see `submit_many`), queue them, wake the loop if due."""
        if self._task is None:
            raise ModelNotReady(f"model {self.name!r} is not running")
        try:
            sizes = [self._rows(item) for item in items]
        except BaseException as exc:  # model code (Predictor.rows), on the event loop
            raise model_failure(self.name, exc) from exc
        self._check(sizes)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        background, context = BACKGROUND.get(), CURRENT.get()
        batch = [
            _Pending(item, rows, loop.create_future(), now, background=background, context=context)
            for item, rows in zip(items, sizes, strict=True)
        ]
        self._queue.extend(batch)
        self._queued_rows += sum(sizes)
        self._arrivals += len(batch)
        waiter = self._waiter
        if waiter is not None and self._queued_rows >= self._wake_at_rows and not waiter.done():
            waiter.set_result(None)
        return batch

    def check_count(self, count: int) -> None:
        """Raise PayloadTooLarge when one request brings more than `max_queue_size` items (the
        model could never take them at once); callers check before preprocessing them."""
        most = self.config.max_queue_size
        if count > most:
            raise PayloadTooLarge(
                f"request has {count} examples; model {self.name!r} queues at most {most} "
                "(max_queue_size): send fewer per request"
            )

    def _check(self, sizes: list[int]) -> None:
        """Refuse a request's items before any is queued (see `submit_many`)."""
        limit = self.config.max_batch_size
        for rows in sizes:
            if not 1 <= rows <= limit:
                raise InvalidInput(
                    f"request has {rows} rows; model {self.name!r} takes 1 to {limit} (max_batch_size) "
                    "per request" + ("; split it into smaller requests" if rows > limit else "")
                )
        self.check_count(len(sizes))
        most = self.config.max_queue_size
        if len(self._queue) + len(sizes) > most:
            raise Overloaded(
                f"model {self.name!r} has {len(self._queue)} requests queued "
                f"(max_queue_size {most}); retry later"
            )

    def _withdraw(self, batch: list[_Pending]) -> None:
        """Cancel the unanswered items of a request that ended, and take those still queued off the queue."""
        for pending in batch:
            if not pending.future.done():
                pending.future.cancel()
            if pending.queued:
                self._queue.remove(pending)
                self._queued_rows -= pending.rows
                pending.queued = False

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                await self._sleep(1, None)
                continue
            await self._wait_for_batch()
            answered = self._answer_late() if self._default is not None else 0
            batch = self._take_batch()
            answered += len(batch)
            if batch:
                await self._run(batch)
            if answered:
                self._answered, self._arrivals = answered, 0

    @property
    def batch_limit(self) -> int:
        """Most rows in the next batch: max_batch_size, or the adaptive limit under an SLO."""
        return self.adaptive.limit if self.adaptive is not None else self.config.max_batch_size

    async def _wait_for_batch(self) -> None:
        """Wait until a full batch is queued or the oldest request has waited the queue delay."""
        delay_s = self.config.max_queue_delay_ms / 1000
        if self.adaptive is not None:
            delay_s = self.adaptive.queue_delay_s(delay_s)
        limit = self.batch_limit
        remaining = self._queue[0].enqueued_at + delay_s - time.monotonic()
        if self._queued_rows < limit and remaining > 0:
            await self._sleep(limit, remaining)
        if self.adaptive is not None:
            await self._gather_stream(limit)

    async def _gather_stream(self, limit: int) -> None:
        """Under an SLO, keep a short batch open while requests keep arriving, within the SLO's slack.

        The additive increase grows the limit only on full batches. Closed-loop clients can settle
        into two halves that take turns, neither ever filling a batch: the limit then stays at half
        the clients and throughput with it (benchmarks/README.md). Waiting while the other half
        streams back in (no gap longer than `arrival_gap_s`) merges them. It closes on a quiet gap,
        a full batch, the slack (SLO minus two batch times, counted from the oldest request), or
        once as many requests have arrived since the last batch finished as that batch answered:
        the clients it answered are back, and waiting longer would only idle the core (at 8
        connections that idle wait cost 10-15% of the throughput, benchmarks/README.md).
        """
        assert self.adaptive is not None
        deadline = self._queue[0].enqueued_at + self.adaptive.queue_delay_s(self.adaptive.slo_s)
        while self._queued_rows < limit and self._arrivals < self._answered:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            before = self._queued_rows
            await self._sleep(limit, min(self.arrival_gap_s, remaining))
            if self._queued_rows == before:
                return

    async def _sleep(self, rows: int, timeout_s: float | None) -> None:
        """Wait until `rows` rows are queued, or `timeout_s` seconds have passed (None: no limit)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _wake, waiter)
        self._waiter, self._wake_at_rows = waiter, rows
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _take_batch(self) -> list[_Pending]:
        """Pop queued requests up to max_batch_size rows, dropping those whose caller has gone."""
        batch: list[_Pending] = []
        rows = 0
        limit = self.batch_limit
        while self._queue and (rows == 0 or rows + self._queue[0].rows <= limit):
            pending = self._queue.popleft()
            pending.queued = False
            self._queued_rows -= pending.rows
            if pending.future.done():  # cancelled: the client disconnected or timed out
                continue
            batch.append(pending)
            rows += pending.rows
        return batch

    def _answer_late(self) -> int:
        """Give the default output to every queued request that would miss the SLO; returns how
        many requests it took off the queue.

        A request would miss when its wait so far plus the recent batch time (moving average) is
        over the SLO. The queue is oldest first, so those are at its front. Checked before each
        batch, so a default answer comes at most one batch time after its request became late. A
        default that cannot be built fails that request like a model error.
        """
        assert self.adaptive is not None and self._default is not None
        cutoff = time.monotonic() + self.adaptive.batch_time_s - self.adaptive.slo_s
        answered = 0
        while self._queue and self._queue[0].enqueued_at < cutoff:
            pending = self._queue.popleft()
            pending.queued = False
            self._queued_rows -= pending.rows
            answered += 1
            if pending.future.done():
                continue
            try:
                output = DefaultOutput(self._default(pending.item))
            except BaseException as exc:  # model code on the event loop: that request's failure
                self._fail([pending], exc)
                continue
            pending.future.set_result(output)
        return answered

    async def _run(self, batch: list[_Pending]) -> None:
        """One forward pass over `batch`; each request gets its output, or its failure.

        When the pass fails, the batch is split in halves and each half run again, down to single
        requests, so a bad request fails alone and good ones pay O(log n) extra passes, not n.
        Every pass counts as a batch (stats, metrics). Each request's context gets the batch's
        rows (`batch_size`); with `tracer`, the batch and its traced requests get their spans.
        """
        loop = asyncio.get_running_loop()
        items = [pending.item for pending in batch]
        rows = sum(pending.rows for pending in batch)
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.rows += rows
        executor = self._executor
        if all(pending.background for pending in batch):
            executor = self._background_pool()
        started = self._running_since = time.monotonic()
        tracer = self.tracer
        traced = tracer.begin(_traces(batch), rows, started) if tracer is not None else None
        try:
            outputs = await loop.run_in_executor(executor, self._checked_predict, items, traced)
        except Exception as exc:
            if tracer is not None and traced is not None:
                tracer.end(traced, time.monotonic(), str(exc))
            # A dead or restarting worker process is no request's fault: halves would only crash
            # the restarted worker again, log2(n) times, so the whole batch fails at once.
            if len(batch) == 1 or isinstance(exc, WorkerProcessDied | ModelNotReady):
                self._fail(batch, exc)
                return
            half = len(batch) // 2
            for part in (batch[:half], batch[half:]):
                live = [pending for pending in part if not pending.future.done()]
                if live:
                    await self._run(live)
            return
        finally:
            self._running_since = None
        finished = time.monotonic()
        if self.adaptive is not None:
            self.adaptive.observe(rows, finished - started)
        if self.observer is not None:
            waits = [started - pending.enqueued_at for pending in batch]
            self.observer.on_batch(rows, waits, finished - started)
        if tracer is not None and traced is not None:
            tracer.end(traced, finished)
        for pending, output in zip(batch, outputs, strict=True):
            if pending.context is not None:
                pending.context.batch_size = rows
            if not pending.future.done():
                pending.future.set_result(output)

    def _background_pool(self) -> DaemonThreadPool:
        """The thread that runs batches of background requests only, at the lowest CPU priority:
        the OS gives it a core only when no other thread of the server wants it. Made on first use."""
        if self._background is None:
            self._background = DaemonThreadPool(1, f"modelbay-{self.name}-background")
            self._background.submit(lower_priority)  # its first job, before any batch
        return self._background

    def _checked_predict(self, items: list[Any], traced: BatchTrace | None = None) -> list[Any]:
        if traced is None:
            outputs = self._predict(items)
        else:  # a model worker process gets the batch span's traceparent (process_predictors.py)
            token = BATCH_TRACEPARENT.set(traced.traceparent)
            try:
                outputs = self._predict(items)
            finally:
                BATCH_TRACEPARENT.reset(token)
        if not isinstance(outputs, list | tuple) or len(outputs) != len(items):
            got = len(outputs) if isinstance(outputs, list | tuple) else type(outputs).__name__
            raise InferenceFailed(
                f"predict returned {got} outputs for a batch of {len(items)}; it must return one per input"
            )
        return list(outputs)

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        failure = model_failure(self.name, exc)  # one log line and error id for the batch
        self.stats.failed += len(batch)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(failure)


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority: Linux's SCHED_IDLE policy (it runs only when
    no other thread wants the core; sched(7)), else nice BACKGROUND_NICE. On Linux each thread has
    its own policy and nice value. Where the OS allows neither, nothing changes."""
    thread = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, thread, BACKGROUND_NICE)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))


def _traces(batch: list[_Pending]) -> list[tuple[RequestTrace, float]]:
    """The traced requests of a batch: (trace, time.monotonic() it was queued)."""
    return [
        (pending.context.span, pending.enqueued_at)
        for pending in batch
        if pending.context is not None and pending.context.span is not None
    ]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
