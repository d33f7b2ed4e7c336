"""Prometheus metrics of one server, in its own registry (two servers in one process do not clash).

Exposed at `GET /metrics` in the Prometheus text format (prometheus-client). What a user watches to
tune batching:

    modelbay_requests_total{model,version,door,status}        door: predict | infer;
                                                             status: success or the error class
    modelbay_request_duration_seconds{model,version,door}    total, in the dataplane
    modelbay_queue_wait_seconds{model,version}               enqueue -> batch start, per request
    modelbay_inference_duration_seconds{model,version}       one predict() call, per batch
    modelbay_batch_size{model,version}                       rows per batch
    modelbay_queue_depth{model,version}                      requests waiting now
    modelbay_cache_requests_total{model,version,result}      hit | miss
    modelbay_default_outputs_total{model,version}            predictions answered with the default
                                                             output (batching.default_output)
    modelbay_shadow_requests_total{model,version,status}     shadow calls (traffic.shadow) to this
                                                             version: success, skipped (its queue was
                                                             half full) or the error class
    modelbay_shadow_duration_seconds{model,version}          a shadow call's time, answered ones
    modelbay_shadow_agreement_total{model,version,result}    agree | disagree: its answer against the
                                                             one served to the caller

Model labels only ever name served models; a request for an unknown model is counted under
model="" so a client cannot grow the label set.

With `--workers N` each process writes its values to files in a shared folder
(`PROMETHEUS_MULTIPROC_DIR`, prometheus-client's multiprocess mode, set up by
`modelbay.server.run_workers`), and whichever worker answers a scrape reports the sum over all of
them: counters and histograms add up across workers, including workers that have exited; the
queue depth is each live worker's, summed, as of its last batch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST


MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """Where worker processes started inside this block write their metrics (sets PROMETHEUS_MULTIPROC_DIR).

    A folder the user named in PROMETHEUS_MULTIPROC_DIR is used, its `*.db` files from an earlier
    run removed first (prometheus-client's docs: wipe it between runs); otherwise a new temporary
    folder, deleted at the end. Workers must be started (spawned) after this is entered.
    """
    named = os.environ.get(MULTIPROC_DIR)
    folder = Path(named) if named else Path(tempfile.mkdtemp(prefix="modelbay-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_DIR] = str(folder)
    try:
        yield folder
    finally:
        if not named:
            os.environ.pop(MULTIPROC_DIR, None)
            shutil.rmtree(folder, ignore_errors=True)


def multiprocess_mode() -> bool:
    """True when prometheus-client keeps values in PROMETHEUS_MULTIPROC_DIR's files (the variable was
    set before prometheus-client was first imported in this process)."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The collectors of one server; `for_model` binds the labels of one model version once."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model", "version"]
        self.requests = Counter(
            "modelbay_requests",
            "Inference requests by outcome.",
            [*labels, "door", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "modelbay_request_duration_seconds",
            "Request time in the dataplane.",
            [*labels, "door"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "modelbay_queue_wait_seconds",
            "Time a request waited for its batch.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "modelbay_inference_duration_seconds",
            "Time of one batch's predict call.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelbay_batch_size", "Rows per batch.", labels, buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "modelbay_queue_depth",
            "Requests waiting to be batched.",
            labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.cache = Counter(
            "modelbay_cache_requests",
            "Prediction cache lookups.",
            [*labels, "result"],
            registry=self.registry,
        )
        self.default_outputs = Counter(
            "modelbay_default_outputs",
            "Predictions answered with the model's default output (they would have missed the SLO).",
            labels,
            registry=self.registry,
        )

        self.shadow_requests = Counter(
            "modelbay_shadow_requests",
            "Shadow calls to this version by outcome: success, skipped, or the error class.",
            [*labels, "status"],
            registry=self.registry,
        )
        self.shadow_duration = Histogram(
            "modelbay_shadow_duration_seconds",
            "Time of a shadow call that was answered.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_agreement = Counter(
            "modelbay_shadow_agreement",
            "Shadow answers compared with the answer served to the caller: agree or disagree.",
            [*labels, "result"],
            registry=self.registry,
        )

    def for_model(self, model: str, version: str, queue_depth: Callable[[], float]) -> ModelMetrics:
        """Label-bound collectors for one model version; `queue_depth` is read at each scrape (in
        multiprocess mode, after each batch)."""
        return ModelMetrics(self, model, version, queue_depth)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format; in multiprocess mode, every worker's."""
        return generate_latest(self._current())

    def collect(self) -> Iterable[Metric]:
        """Every metric family with its samples now, as `render` writes them (the dashboard's summary
        reads them so, without writing and parsing the text)."""
        return self._current().collect()

    def _current(self) -> CollectorRegistry:
        if not multiprocess_mode():
            return self.registry
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged

    def close(self) -> None:
        """This process stops serving: in multiprocess mode its live gauges leave the sum."""
        if multiprocess_mode():
            multiprocess.mark_process_dead(os.getpid())


class ModelMetrics:
    """One model version's collectors, labels bound once (no label lookup per request)."""

    def __init__(self, metrics: Metrics, model: str, version: str, queue_depth: Callable[[], float]) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self._queue_wait = metrics.queue_wait.labels(model, version)
        self._inference = metrics.inference.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        self._duration = {
            door: metrics.request_duration.labels(model, version, door) for door in ("predict", "infer")
        }
        self._success = {
            door: metrics.requests.labels(model, version, door, "success") for door in ("predict", "infer")
        }
        self.cache_hit = metrics.cache.labels(model, version, "hit")
        self.cache_miss = metrics.cache.labels(model, version, "miss")
        self.default_outputs = metrics.default_outputs.labels(model, version)
        self._failures: set[tuple[str, str]] = set()  # (door, error) pairs counted, for `forget`
        self._shadow_statuses: set[str] = set()  # shadow series are made on first use, for `forget`
        self._shadow_results: set[str] = set()
        depth = metrics.queue_depth.labels(model, version)
        # A function is read at scrape time, in this process only; workers write a value instead.
        self._depth: Callable[[], None] | None = None
        if multiprocess_mode():
            self._depth = lambda: depth.set(queue_depth())
        else:
            depth.set_function(queue_depth)

    def on_batch(self, rows: int, queue_waits_s: list[float], inference_s: float) -> None:
        """Record one batch: its rows, each request's queue wait and the predict call's time (seconds)."""
        self._batch_size.observe(rows)
        self._inference.observe(inference_s)
        for wait in queue_waits_s:
            self._queue_wait.observe(wait)
        if self._depth is not None:
            self._depth()

    def on_request(self, door: str, duration_s: float, error: BaseException | None) -> None:
        """Record one request's time in the dataplane and its outcome."""
        self._duration[door].observe(duration_s)
        if error is None:
            self._success[door].inc()
        else:
            self._failures.add((door, type(error).__name__))
            self._metrics.requests.labels(*self._labels, door, type(error).__name__).inc()

    def on_shadow(self, status: str, duration_s: float | None = None, agreed: bool | None = None) -> None:
        """Record one shadow call to this version: its status ("success", "skipped" or the error
        class), its time in seconds when it answered, and whether its answer agreed with the one
        served (None: not compared)."""
        self._shadow_statuses.add(status)
        self._metrics.shadow_requests.labels(*self._labels, status).inc()
        if duration_s is not None:
            self._metrics.shadow_duration.labels(*self._labels).observe(duration_s)
        if agreed is not None:
            result = "agree" if agreed else "disagree"
            self._shadow_results.add(result)
            self._metrics.shadow_agreement.labels(*self._labels, result).inc()

    def forget(self) -> None:
        """Remove this model version's series: it was unloaded. Else its queue-depth function would
        keep the unloaded model (weights and all) alive, and every new version would add series
        for good. Not in multiprocess mode, where prometheus_client cannot remove them."""
        if multiprocess_mode():
            return
        metrics, labels = self._metrics, self._labels
        for family in (metrics.queue_wait, metrics.inference, metrics.batch_size, metrics.default_outputs):
            family.remove(*labels)
        metrics.queue_depth.remove(*labels)
        for door in ("predict", "infer"):
            metrics.request_duration.remove(*labels, door)
            metrics.requests.remove(*labels, door, "success")
        for door, error in self._failures:
            metrics.requests.remove(*labels, door, error)
        for result in ("hit", "miss"):
            metrics.cache.remove(*labels, result)
        for status in self._shadow_statuses:
            metrics.shadow_requests.remove(*labels, status)
        for result in self._shadow_results:
            metrics.shadow_agreement.remove(*labels, result)
        if "success" in self._shadow_statuses:
            metrics.shadow_duration.remove(*labels)
