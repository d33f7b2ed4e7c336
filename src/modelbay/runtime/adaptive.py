"""Adaptive batch size against a latency SLO: additive increase, multiplicative decrease.

The scheme of Clipper (Crankshaw et al., "Clipper: A Low-Latency Online Prediction Serving System",
NSDI 2017, section 4.3.1): grow the batch size by a fixed step while batches meet the latency
objective, cut it by a factor when one misses. Here a batch "meets" the objective when its oldest
request, from enqueue to answer, took at most `slo_ms`, so queueing counts too; the queue delay is
capped so a request never waits longer than the SLO minus the recent batch time.
"""

from __future__ import annotations


class AdaptiveBatchSize:
    """The batch-size limit of one model, tuned online.

    slo_ms:         target latency of every request, milliseconds (a p99-style bound).
    max_batch_size: the limit never grows past this; it starts at 1.
    step, backoff:  additive increase (rows) after a full batch that met the SLO; multiplicative
                    decrease (factor) after a batch that missed it.
    """

    def __init__(self, slo_ms: float, max_batch_size: int, step: int = 1, backoff: float = 0.9) -> None:
        if slo_ms <= 0 or not 0 < backoff < 1 or step < 1:
            raise ValueError("slo_ms must be > 0, 0 < backoff < 1, step >= 1")
        self.slo_s = slo_ms / 1000
        self.max_batch_size = max_batch_size
        self.step = step
        self.backoff = backoff
        self.limit = 1
        self.batch_time_s = 0.0  # moving average of one batch's inference time

    def observe(self, rows: int, inference_s: float, oldest_latency_s: float) -> None:
        """Learn from one finished batch: its rows, its inference time and its oldest request's latency.

        Misses the SLO: limit *= backoff (at least 1). Meets it with a full batch (rows >= limit):
        limit += step (at most max_batch_size). A batch below the limit teaches nothing about size.
        """
        self.batch_time_s = (
            inference_s if self.batch_time_s == 0 else 0.8 * self.batch_time_s + 0.2 * inference_s
        )
        if oldest_latency_s > self.slo_s:
            self.limit = max(1, int(self.limit * self.backoff))
        elif rows >= self.limit:
            self.limit = min(self.max_batch_size, self.limit + self.step)

    def queue_delay_s(self, configured_s: float) -> float:
        """The longest a request may wait for its batch: the configured delay, capped so that the
        wait plus a batch's recent inference time stays within the SLO."""
        return max(0.0, min(configured_s, self.slo_s - self.batch_time_s))
