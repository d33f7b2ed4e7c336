"""Adaptive batch size against a latency SLO: additive increase, multiplicative decrease.

The scheme of Clipper (Crankshaw et al., "Clipper: A Low-Latency Online Prediction Serving System",
NSDI 2017, section 4.3.1): grow the batch size by a fixed step while the time to *process* a batch
stays within the objective, cut it by a factor when it does not. The budget for one batch is half
the SLO: at steady state a request waits at most for the batch in progress, then runs in its own,
so it is answered within about two batch times. (Reacting to end-to-end latency instead, queueing
included, spirals down under load: smaller batches mean longer queues, hence smaller batches; the
first version did that, see benchmarks/README.md.) The queue delay is capped likewise.
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

    @property
    def batch_budget_s(self) -> float:
        """The most one batch may take to process: half the SLO, in seconds."""
        return self.slo_s / 2

    def observe(self, rows: int, inference_s: float) -> None:
        """Learn from one finished batch: its rows and the seconds its predict call took.

        Over the batch budget: limit *= backoff (at least 1). Within it, with a full batch
        (rows >= limit): limit += step (at most max_batch_size). A batch below the limit teaches
        nothing about size.
        """
        self.batch_time_s = (
            inference_s if self.batch_time_s == 0 else 0.8 * self.batch_time_s + 0.2 * inference_s
        )
        if inference_s > self.batch_budget_s:
            self.limit = max(1, int(self.limit * self.backoff))
        elif rows >= self.limit:
            self.limit = min(self.max_batch_size, self.limit + self.step)

    def queue_delay_s(self, configured_s: float) -> float:
        """The longest a request may wait for its batch to fill: the configured delay, capped so that
        the wait plus two recent batch times stays within the SLO."""
        return max(0.0, min(configured_s, self.slo_s - 2 * self.batch_time_s))
