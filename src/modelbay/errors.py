"""The one exception tree of modelbay.

    ModelbayError                   base; never raised itself
    ├── InvalidInput                the client sent something the model cannot take (400 / INVALID_ARGUMENT)
    │   ├── PayloadTooLarge         a body or image over its size limit             (413)
    │   ├── UnsupportedMediaType    a Content-Type the door does not speak          (415)
    │   └── RequestTimeout          the client sent its body too slowly             (408)
    ├── ModelNotFound               no model (or model version) by that name        (404 / NOT_FOUND)
    ├── Unauthenticated             no valid API key (with --auth)                  (401 / UNAUTHENTICATED)
    ├── Forbidden                   an API key of the wrong scope or model, or      (403 / PERMISSION_DENIED)
    │                               management from off loopback without --auth
    ├── Unavailable                 cannot take the request now; retry later        (503 / UNAVAILABLE)
    │   ├── ModelNotReady           the model is loading, stopping or failed
    │   ├── Overloaded              the model's queue is full (HTTP adds Retry-After)
    │   └── TooManyRequests         an API key over its rate limit                  (429 / RESOURCE_EXHAUSTED,
    │                                                                                with Retry-After)
    ├── DeadlineExceeded            no answer within the model's timeout_s          (504 / DEADLINE_EXCEEDED)
    ├── InferenceFailed             the model itself failed on a valid request      (500 / INTERNAL)
    │   └── WorkerProcessDied       its model worker process died (or was killed) during the batch
    ├── ModelLoadError              an artifact cannot be loaded; raised before serving (CLI exit 2)
    ├── ExportFailed                `modelbay export` cannot capture a model, or its export does not
    │                               answer as the original within the tolerance (CLI exit 2)
    └── ShipError                   `modelbay build` / `manifests` cannot package the models: a package
                                    it cannot pin, a wheel it cannot build, an output it must not
                                    overwrite (CLI exit 2)

Each transport keeps one table from these classes to its status codes (`modelbay.http.errors`,
`modelbay.grpc.errors`); `modelbay.client` raises the same classes back from those codes.
A model's own failure is always InferenceFailed, a server error: never reported as the client's fault.
"""

from __future__ import annotations

import logging
import uuid
from typing import TypeVar

_T = TypeVar("_T")
_model_log = logging.getLogger("modelbay.batcher")  # where model failures have always been logged


class ModelbayError(Exception):
    """Base of every error modelbay raises on purpose. `message` is safe to show to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ModelbayError):
    """The request is malformed or does not match the model's inputs; says what was expected."""


class PayloadTooLarge(InvalidInput):
    """A request body, or a decoded image, is over its configured limit."""


class UnsupportedMediaType(InvalidInput):
    """The request's Content-Type is not one this endpoint accepts."""


class RequestTimeout(InvalidInput):
    """The request's body did not arrive within `read_timeout_s` (a slow or stalled client)."""


class ModelNotFound(ModelbayError):
    """No model is served under that name, or the model has no such version."""


class Unauthenticated(ModelbayError):
    """The server needs an API key (`modelbay serve --auth`) and the request carried none, or one
    that is not valid (unknown, revoked, malformed). The message never holds the key sent."""


class Forbidden(ModelbayError):
    """The caller may not do this: its API key lacks the scope (infer, admin) or the model; or,
    on a server without API keys, the management API was called from off loopback."""


class Unavailable(ModelbayError):
    """The server cannot take the request now; a retry later may succeed.

    Clients raise this base class when the wire does not say which case it is (gRPC UNAVAILABLE).
    """


class ModelNotReady(Unavailable):
    """The model is known but not ready (loading, stopping or failed)."""


class Overloaded(Unavailable):
    """The model's request queue is full (`max_queue_size`); the client should retry later."""


class TooManyRequests(Unavailable):
    """The API key sent more requests than its rate limit allows (`rate_per_s`, `burst` in the key
    file: a token bucket); a retry after `retry_after_s` seconds may succeed (HTTP Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ModelbayError):
    """The request was not answered within its deadline (the model's `timeout_s`, or the gRPC
    client's own deadline); if it was still queued, it was dropped without running."""


class InferenceFailed(ModelbayError):
    """The model raised, or broke the batch contract, on a request that was valid.

    `error_id` ties the client's message to the server log line that holds the traceback.
    """

    def __init__(self, message: str, error_id: str | None = None) -> None:
        super().__init__(message)
        self.error_id = error_id


class WorkerProcessDied(InferenceFailed):
    """The model's worker process died during the batch (a crash, the OOM killer, or killed past
    `timeout_s`): every request of that batch fails with it. No request is to blame, so the
    batcher does not split the batch to find one: rerunning halves would only crash the
    restarted worker again (`modelbay.runtime.model_process`)."""


class ModelLoadError(ModelbayError):
    """An artifact cannot be loaded or served; the message says what was found and what to do."""


class ExportFailed(ModelbayError):
    """`modelbay export` could not capture the model (torch.export, the ONNX exporter), or the
    exported artifact's answers differ from the original's beyond the tolerance it names."""


class ShipError(ModelbayError):
    """`modelbay build` or `modelbay manifests` cannot package the models for a container or a
    cluster; the message names what (a requirement, a package, a folder) and what to do."""


def nearest(table: dict[type[ModelbayError], _T], exc: ModelbayError, default: _T) -> _T:
    """The entry of `table` for the closest class of `exc` in its MRO, else `default`.

    Each transport's status table (HTTP status, gRPC code) is looked up this way.
    """
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return default


def internal_error(exc: Exception, log: logging.Logger) -> InferenceFailed:
    """An unexpected exception (a modelbay bug, not the client's fault) as a 500 / INTERNAL.

    The traceback goes to `log` under a fresh error id; the client sees only that id.
    """
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error (error id %s)", error_id, exc_info=exc)
    return InferenceFailed(f"internal server error (error id {error_id})", error_id)


def model_failure(model: str, exc: BaseException) -> ModelbayError:
    """What a client is told when model code raised `exc`.

    A ModelbayError other than InferenceFailed (e.g. InvalidInput raised by a handler) passes
    through unchanged: its message is meant for the client. Anything else is logged with its
    traceback under a fresh error id and becomes InferenceFailed (HTTP 500) that says only that
    the model failed and the id: exception text can hold paths and secrets (issue 9, item 12).
    """
    if isinstance(exc, ModelbayError) and not isinstance(exc, InferenceFailed):
        return exc
    error_id = uuid.uuid4().hex[:12]
    _model_log.error("model %r failed (error id %s)", model, error_id, exc_info=exc)
    return InferenceFailed(
        f"model {model!r} failed (error id {error_id}; the server log has the details)", error_id
    )
