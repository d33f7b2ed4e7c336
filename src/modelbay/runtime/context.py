"""One request's context: the door creates it, the core reads and enforces it.

It says who called, the trace it belongs to, its routing key and parameters (what access rules,
traffic splits and traces read), and it carries the request's deadline and the means to end the
request early for a reason: its deadline passed (DeadlineExceeded, 504), its client went away
(ClientGone: nothing to answer), or the server's drain deadline passed (Unavailable, 503). Ending a
request cancels the asyncio task that serves it, so whatever it awaits is cancelled with it: a
request still queued in a batcher leaves the queue at once and never runs (issue 9, items 2, 3).

No timer is armed per request: the dataplane sweeps the requests in flight a few times a second
(`Dataplane.SWEEP_S`), ending those past their deadline and letting the door watch the client of
those that are slow (`watch`). A timer per request cost ~10 us on uvloop (benchmarks/request_cost.py).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from modelbay.errors import ModelbayError

if TYPE_CHECKING:
    from modelbay.runtime.tracing import RequestTrace


class ClientGone(Exception):
    """The client closed its connection (or cancelled its call) before the answer; no one to tell."""


class RequestContext:
    """The life of one inference request as the dataplane sees it.

    deadline: `time.monotonic()` seconds (the event loop's clock) by which the request must be
              answered, as the door knows it (a gRPC client's deadline); None: no limit from the
              door. The dataplane narrows it by the model's `timeout_s`.
    watch:    how to learn that the client has gone: awaited (once, in a task the dataplane starts
              when the request is still unanswered `WATCH_AFTER_S` after it began), it returns
              True when the client left, and the request is then ended with ClientGone. None:
              nothing to watch.
    caller:   who sent the request, as the door knows it (the client's address; an API key's name
              once keys exist): what access rules and logs name.
    trace:    the W3C `traceparent` the client sent (https://www.w3.org/TR/trace-context/), or None.
    routing_key: what a traffic split keeps together (the `modelbay-routing-key` header), or None.
    headers:  the request's headers (HTTP, lower-case names) or metadata (gRPC), as the door read
              them: what a per-model rule may look at (a sticky split's header). Never logged.
    parameters: request parameters a door passes on to the core (none of the doors does yet), {}.
    request_id: the request's id (`x-request-id`, the client's or one the door made): what its
              access log line and answer carry; "" when the door gave none.
    span:     the request's trace (runtime/tracing.py) while it is sampled, else None (tracing off).
    batch_size: rows in the batch that answered the request (its last batch), once one did; 0 when
              none did (a cache hit, or a request refused before it).
    started:  `time.monotonic()` when the dataplane took the request.
    task:     the asyncio task serving the request; the dataplane fills it in.
    watcher:  the task awaiting `watch`, once started.
    reason:   why the request was ended early, once it was (see `end`).
    """

    __slots__ = (
        "batch_size",
        "caller",
        "deadline",
        "headers",
        "parameters",
        "reason",
        "request_id",
        "routing_key",
        "span",
        "started",
        "task",
        "trace",
        "watch",
        "watcher",
    )

    def __init__(
        self,
        deadline: float | None = None,
        watch: Callable[[], Awaitable[bool]] | None = None,
        *,
        caller: str = "",
        trace: str | None = None,
        routing_key: str | None = None,
        parameters: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> None:
        self.deadline = deadline
        self.watch = watch
        self.caller = caller
        self.trace = trace
        self.routing_key = routing_key
        self.parameters = parameters if parameters is not None else {}
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.started = 0.0
        self.task: asyncio.Task[Any] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.reason: ModelbayError | ClientGone | None = None
        self.request_id = request_id
        self.span: RequestTrace | None = None
        self.batch_size = 0

    def end(self, reason: ModelbayError | ClientGone) -> None:
        """End the request now: its task is cancelled, and the dataplane raises `reason` in its place.

        Only the first reason counts; a request already answered (no task) is left alone.
        """
        task = self.task
        if self.reason is None and task is not None and not task.done():
            self.reason = reason
            task.cancel()


# The request the running task serves (set by the dataplane around it): what the batcher records a
# request's batch size and trace on. None outside one, and in a shadow call's task.
CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "modelbay_request", default=None
)
# In the thread running a traced batch: its span's W3C traceparent, which a model worker process
# gets with the batch (runtime/process_predictors.py); None otherwise.
BATCH_TRACEPARENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "modelbay_batch_traceparent", default=None
)
