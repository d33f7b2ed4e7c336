"""OpenTelemetry traces of inference requests (`modelbay serve --tracing`; issue 11, item 3).

One trace per request: a SERVER span from the door (its parent the W3C `traceparent` the client
sent over HTTP or gRPC metadata, https://www.w3.org/TR/trace-context/) with a child span for each
phase a user tunes:

    decode        the door reads and decodes the body           (door)
    preprocess    the predictor's per-request hooks before it   (`decode_tensors` / `preprocess`)
    queue_wait    queued in the batcher until its batch began
    inference     its batch's forward pass (`batch_size` rows; linked to the batch span)
    postprocess   the per-request hooks after it                (`encode_tensors` / `postprocess`)
    encode        the door encodes the answer                   (door)

and one `batch` span per batch, a child of the first traced request in it, linked to every traced
request in it (the OpenTelemetry pattern for work done for several traces at once). A model in a
worker process (runtime/model_process.py) gets the batch span's `traceparent` with the batch, and
its `forward` span there is a child of it. Spans carry `model_name`, `model_version` and
`batch_size`.

Everything goes through the OpenTelemetry SDK: the sampler (`OTEL_TRACES_SAMPLER`, parent-based
always-on by default), the resource (`OTEL_SERVICE_NAME`, default "modelbay";
`OTEL_RESOURCE_ATTRIBUTES`), the batching span processor (`OTEL_BSP_*`) and the OTLP/HTTP exporter
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `..._TRACES_ENDPOINT`, `..._HEADERS`, `..._TIMEOUT`);
`OTEL_TRACES_EXPORTER=console` prints spans instead, `none` drops them. Phases are timed with
`time.monotonic()` where they run and their spans made with those times, so a request that is not
sampled costs one check per phase, and a server without `--tracing` one attribute check
(`RequestContext.span is None`): this module (and the SDK) is imported only with `--tracing`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from modelbay.errors import ModelLoadError

if TYPE_CHECKING:
    from modelbay.runtime.context import RequestContext

_PROPAGATOR = TraceContextTextMapPropagator()

SERVICE_NAME = "modelbay"
INSTRUMENTATION = "modelbay"
# time.monotonic() seconds -> Unix epoch nanoseconds, the clock of OpenTelemetry's timestamps.
_EPOCH_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def epoch_ns(monotonic_s: float) -> int:
    """Unix epoch nanoseconds of a `time.monotonic()` reading (OpenTelemetry's span timestamps)."""
    return int(monotonic_s * 1e9) + _EPOCH_OFFSET_NS


class Tracing:
    """The traces of one server process: a TracerProvider of the OpenTelemetry SDK and its tracer.

    Build it with `from_environment` in the process that serves (each `--workers` process has its
    own, like its own batchers), and `shutdown` it when serving ends (spans still buffered are
    exported then).
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION)

    @classmethod
    def from_environment(cls, role: str = "server") -> Tracing:
        """A provider configured by the standard OTEL_* variables (module docstring); `role` goes
        into the resource as `modelbay.role` ("server", or "model_worker" in a worker process).

        Raises ModelLoadError when OTEL_TRACES_EXPORTER names an exporter modelbay does not ship.
        """
        attributes: dict[str, Any] = {"modelbay.role": role}
        named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        if not named:
            attributes["service.name"] = SERVICE_NAME
        provider = TracerProvider(resource=Resource.create(attributes))
        exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
        if exporter == "otlp":
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter != "none":
            raise ModelLoadError(
                f"OTEL_TRACES_EXPORTER={exporter!r}: modelbay exports traces with 'otlp' (OTLP over "
                "HTTP/protobuf), 'console' or 'none'"
            )
        return cls(provider)

    def start(self, context: RequestContext, name: str, started: float | None = None) -> None:
        """Begin the request's SERVER span `name` (e.g. "POST /v2/models/{model}/infer"), a child
        of the client's `context.trace`, at `started` (time.monotonic(); default now); when the
        sampler records it, `context.span` gets its RequestTrace."""
        parent = _PROPAGATOR.extract({"traceparent": context.trace}) if context.trace else None
        start_ns = epoch_ns(started) if started is not None else time.time_ns()
        span = self.tracer.start_span(name, parent, kind=SpanKind.SERVER, start_time=start_ns)
        if span.is_recording():
            context.span = RequestTrace(self.tracer, span, set_span_in_context(span))

    def for_model(self, name: str, version: str) -> BatchTracing:
        """The batch spans of one model version (Batcher.tracer)."""
        return BatchTracing(self.tracer, {"model_name": name, "model_version": version})

    def forward(self, traceparent: str | None) -> contextlib.AbstractContextManager[Any]:
        """A context manager timing one forward pass in a model worker process as the span
        `forward`, a child of the batch span `traceparent` the server sent (nothing if None)."""
        if traceparent is None:
            return contextlib.nullcontext()
        parent = _PROPAGATOR.extract({"traceparent": traceparent})
        return self.tracer.start_as_current_span("forward", parent)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter (at most its timeout)."""
        self.provider.shutdown()


class RequestTrace:
    """The spans of one sampled request: its SERVER span, and its phases as children of it."""

    __slots__ = ("context", "span", "tracer")

    def __init__(self, tracer: Tracer, span: Span, context: Context) -> None:
        self.tracer = tracer
        self.span = span
        self.context = context

    def phase(
        self,
        name: str,
        started: float,
        ended: float,
        attributes: dict[str, Any] | None = None,
        links: Sequence[Link] = (),
        error: str | None = None,
    ) -> None:
        """Record phase `name` from `started` to `ended` (time.monotonic() seconds), a child of the
        request's span; `error`: why it failed (its status is then ERROR)."""
        span = self.tracer.start_span(
            name, self.context, attributes=attributes, links=links, start_time=epoch_ns(started)
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(epoch_ns(ended))

    def finish(self, attributes: dict[str, Any], error: str | None = None) -> None:
        """End the SERVER span now with `attributes` (model, version, batch size, status code);
        `error`: the description of a server-side failure (the span's status is then ERROR)."""
        self.span.set_attributes(attributes)
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()


class BatchTracing:
    """Spans of one model version's batches (Batcher.tracer): `begin` before the forward pass,
    `end` after it, which also records each traced request's queue_wait and inference."""

    def __init__(self, tracer: Tracer, attributes: dict[str, Any]) -> None:
        self.tracer = tracer
        self.attributes = attributes

    def begin(
        self, requests: list[tuple[RequestTrace, float]], rows: int, started: float
    ) -> BatchTrace | None:
        """The span of a batch of `rows` rows beginning at `started` (time.monotonic()), a child of
        the first request's span and linked to each; `requests`: (trace, time it was queued) of its
        traced requests. None when none is traced."""
        if not requests:
            return None
        attributes = {**self.attributes, "batch_size": rows}
        span = self.tracer.start_span(
            "batch",
            requests[0][0].context,
            attributes=attributes,
            links=[Link(trace.span.get_span_context()) for trace, _ in requests],
            start_time=epoch_ns(started),
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, set_span_in_context(span))
        return BatchTrace(span, carrier.get("traceparent"), attributes, requests, started)

    def end(self, batch: BatchTrace, finished: float, error: str | None = None) -> None:
        """End `batch` at `finished` (time.monotonic()); each of its requests gets its queue_wait
        (queued -> the batch's start) and inference (the batch's start -> `finished`) spans."""
        started, link = batch.started, [Link(batch.span.get_span_context())]
        for trace, queued in batch.requests:
            trace.phase("queue_wait", queued, started, self.attributes)
            trace.phase("inference", started, finished, batch.attributes, link, error)
        if error is not None:
            batch.span.set_status(Status(StatusCode.ERROR, error))
        batch.span.end(epoch_ns(finished))


class BatchTrace:
    """One batch's span, its W3C traceparent (sent to a model worker process), its attributes,
    and its traced requests with the time each was queued (time.monotonic())."""

    __slots__ = ("attributes", "requests", "span", "started", "traceparent")

    def __init__(
        self,
        span: Span,
        traceparent: str | None,
        attributes: dict[str, Any],
        requests: list[tuple[RequestTrace, float]],
        started: float,
    ) -> None:
        self.span = span
        self.traceparent = traceparent
        self.attributes = attributes
        self.requests = requests
        self.started = started
