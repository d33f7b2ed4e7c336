"""`/metrics` on a Ray cluster: the front's own series plus every replica's, summed.

The front counts requests (by door and status), their latency, cache lookups and default outputs;
each model replica counts its batches (rows, queue waits, inference time) and its queue depth
(modelbay.metrics names them all). Each replica pushes its Prometheus text to the application's
`MetricsBoard` every PUSH_S seconds; the front reads the board as often and answers a scrape with
the sum, per series, of its own values and the replicas' last ones (`merge`): counters and
histograms add up over replicas, the queue depth is the sum of the replicas' queues. A replica
that stopped pushing for STALE_S seconds (it died or was scaled down) leaves the sum, so a counter
may go down then, as when a process restarts (Prometheus' rate() treats it as a reset).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from modelbay.metrics import Metrics

PUSH_S = 1.0
STALE_S = 5.0


def merge(texts: Iterable[bytes]) -> bytes:
    """Prometheus text expositions -> one, each series (name and labels) summed over them.

    A `_created` series (when the series began, a Unix time) keeps the earliest value instead.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            summed = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in summed:
                    summed[key] = sample.value
                elif sample.name.endswith("_created"):
                    summed[key] = min(summed[key], sample.value)
                else:
                    summed[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector that yields the families it was given (prometheus_client's Collector protocol)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class ClusterMetrics(Metrics):
    """The front's metrics; `render` adds the replicas' last pushed texts (`replicas`)."""

    def __init__(self) -> None:
        super().__init__()
        self.replicas: list[bytes] = []

    def render(self) -> bytes:
        """The sum of the front's series and the replicas' (module docstring)."""
        return merge([super().render(), *self.replicas])


class MetricsBoard:
    """What each replica last pushed, by replica id: a one-replica Serve deployment of the
    application (modelbay.ray.app), so it lives and goes with the application."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[float, bytes]] = {}

    def put(self, replica: str, text: bytes) -> None:
        """Keep `text` (Prometheus text) as replica `replica`'s latest."""
        self._texts[replica] = (time.monotonic(), text)

    def texts(self) -> list[bytes]:
        """The latest text of every replica that pushed within STALE_S seconds; the others are dropped."""
        now = time.monotonic()
        self._texts = {key: kept for key, kept in self._texts.items() if now - kept[0] <= STALE_S}
        return [text for _, text in self._texts.values()]
