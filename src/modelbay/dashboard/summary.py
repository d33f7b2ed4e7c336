"""`GET /dashboard/api/summary`: what the dashboard polls every few seconds, as one JSON object.

The served models and versions, what kind of playground each gets, and each version's counters
read from the server's own Prometheus metrics (modelbay.metrics: the samples `GET /metrics` writes,
so with `--workers N` they are every worker's, summed). The counters are cumulative, as
Prometheus keeps them: the page turns two summaries into rates, p50 / p99 and hit rates over the
interval between them (static/js/charts.js), as Prometheus' `rate` and `histogram_quantile` do.
It is open like /metrics (it tells no more than /metrics does), unless `--auth-health`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from modelbay._version import __version__
from modelbay.predictor import Predictor
from modelbay.runtime.dataplane import Dataplane
from modelbay.runtime.management import is_loopback_host
from modelbay.tasks.image_classification import ImageClassifier
from modelbay.tasks.tensor import TensorPredictor

PATH = "/dashboard/api/summary"


def playground_kind(predictor: Predictor) -> str:
    """Which playground the dashboard offers a model version: "image" (an image classifier, its
    top-k from an image file on /predict), "tensor" (JSON tensors on /v2/.../infer) or "custom"
    (a predict.py: JSON on /predict, tensors on infer when it declares its inputs)."""
    if isinstance(predictor, ImageClassifier):
        return "image"
    if isinstance(predictor, TensorPredictor):
        return "tensor"
    return "custom"


def summary(dataplane: Dataplane, keys: bool, client_host: str) -> dict[str, Any]:
    """The summary for a caller at `client_host` of a server with API keys (`keys`) or without.

    Returns {"server", "time_s" (Unix seconds, the time of the counters), "repository_api",
    "model_control", "changes_refused", "models": [{"name", "default_version", "versions": [
    {"version", "kind", "ready", "max_batch_size", "max_queue_delay_ms", "counters"}]}]}, models
    and versions sorted; "counters" as `version_counters` gives them.
    repository_api: "admin key" (keys on: the model repository API and inference need a key),
    "open" (no keys, a loopback caller: it answers this caller) or "loopback only" (it does not).
    """
    counters = version_counters(dataplane.metrics.collect())
    registry = dataplane.registry
    models: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for model in sorted(registry, key=lambda m: m.name):
        models[model.name].append(
            {
                "version": model.version,
                "kind": playground_kind(model.predictor),
                "ready": model.answering(),
                "max_batch_size": model.batching.max_batch_size,
                "max_queue_delay_ms": model.batching.max_queue_delay_ms,
                "counters": counters.get((model.name, model.version), _empty()),
            }
        )
    manager = dataplane.manager
    if keys:
        repository_api = "admin key"
    else:
        repository_api = "open" if is_loopback_host(client_host) else "loopback only"
    return {
        "server": {"name": "modelbay", "version": __version__},
        "time_s": time.time(),
        "repository_api": repository_api,
        "model_control": manager.mode if manager is not None else "none",
        "changes_refused": manager.refused if manager is not None else "no model manager",
        "models": [
            {"name": name, "default_version": registry.default_version(name), "versions": versions}
            for name, versions in models.items()
        ],
    }


def version_counters(families: Iterable[Metric]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each (model, version)'s cumulative counters in the metric families of modelbay.metrics
    (Metrics.collect, or a text exposition parsed), both doors (predict, infer) added:

      requests, errors     requests answered, and those of them that failed (status != success)
      latency_buckets      [[upper bound in seconds, requests at or under it], ...], cumulative,
                           ending with [null, all] for +Inf (JSON has no infinity)
      batches, batch_rows  batches run and their rows (their ratio: the mean batch size)
      queue_depth          requests waiting to be batched now
      cache_hits, cache_misses, default_outputs
    A model="" series (requests for unknown models) is left out.
    """
    found: dict[tuple[str, str], dict[str, Any]] = defaultdict(_empty)
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("model", ""), labels.get("version", ""))
            if not key[0]:
                continue
            name, value = sample.name, float(sample.value)
            if name == "modelbay_requests_total":
                found[key]["requests"] += value
                if labels.get("status") != "success":
                    found[key]["errors"] += value
            elif name == "modelbay_request_duration_seconds_bucket":
                buckets[key][float(labels["le"])] += value
            elif name in _PLAIN:
                found[key][_PLAIN[name]] += value
            elif name == "modelbay_cache_requests_total":
                found[key]["cache_hits" if labels.get("result") == "hit" else "cache_misses"] += value
    for key, by_bound in buckets.items():
        found[key]["latency_buckets"] = [
            [None if bound == float("inf") else bound, count] for bound, count in sorted(by_bound.items())
        ]
    return dict(found)


_PLAIN = {
    "modelbay_batch_size_count": "batches",
    "modelbay_batch_size_sum": "batch_rows",
    "modelbay_queue_depth": "queue_depth",
    "modelbay_default_outputs_total": "default_outputs",
}


def _empty() -> dict[str, Any]:
    return {
        "requests": 0.0,
        "errors": 0.0,
        "latency_buckets": [],
        "batches": 0.0,
        "batch_rows": 0.0,
        "queue_depth": 0.0,
        "cache_hits": 0.0,
        "cache_misses": 0.0,
        "default_outputs": 0.0,
    }


def openapi_paths() -> dict[str, Any]:
    """The route's entry in the OpenAPI document (modelbay.http.openapi)."""
    number = {"type": "number"}
    counters = {
        "type": "object",
        "properties": {
            **{name: number for name in _empty() if name != "latency_buckets"},
            "latency_buckets": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": ["number", "null"]},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
        },
    }
    version = {
        "type": "object",
        "properties": {
            "version": {"type": "string"},
            "kind": {"enum": ["image", "tensor", "custom"]},
            "ready": {"type": "boolean"},
            "max_batch_size": {"type": "integer"},
            "max_queue_delay_ms": number,
            "counters": counters,
        },
    }
    model = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "default_version": {"type": ["string", "null"]},
            "versions": {"type": "array", "items": version},
        },
    }
    answer = {
        "type": "object",
        "properties": {
            "server": {"type": "object"},
            "time_s": number,
            "repository_api": {"enum": ["admin key", "open", "loopback only"]},
            "model_control": {"type": "string"},
            "changes_refused": {"type": ["string", "null"]},
            "models": {"type": "array", "items": model},
        },
    }
    ok = {"description": "OK", "content": {"application/json": {"schema": answer}}}
    summary_text = "The dashboard's summary: served models, versions and cumulative counters"
    return {PATH: {"get": {"summary": summary_text, "tags": ["dashboard"], "responses": {"200": ok}}}}
