"""The one table from modelbay errors to HTTP status codes, and the OIP error body.

Error bodies are `{"error": "<message>"}`, the `$inference_error_response` of the Open Inference
Protocol (REST), on every route.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from modelbay.codecs.oip_json import encode_json
from modelbay.errors import (
    DeadlineExceeded,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    ModelbayError,
    ModelLoadError,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    internal_error,
    nearest,
)

log = logging.getLogger("modelbay.http")

# Most specific class first: the first match in the exception's MRO wins.
STATUS: dict[type[ModelbayError], int] = {
    Unauthenticated: 401,
    Forbidden: 403,
    TooManyRequests: 429,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    RequestTimeout: 408,
    InvalidInput: 400,
    ModelNotFound: 404,
    Unavailable: 503,
    DeadlineExceeded: 504,
    InferenceFailed: 500,
    ModelLoadError: 500,
}


def status_of(exc: ModelbayError) -> int:
    """HTTP status for `exc`: the entry of its nearest class in STATUS, else 500."""
    return nearest(STATUS, exc, 500)


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded by msgspec (numpy values included)."""
    return Response(encode_json(body), status, headers=headers, media_type="application/json")


def error_body(exc: Exception) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw headers and OIP error body for any exception; an unexpected one is logged.

    Overloaded and TooManyRequests say when to retry (Retry-After, seconds); Unauthenticated says
    how to authenticate (WWW-Authenticate: Bearer, RFC 6750).
    """
    error = exc if isinstance(exc, ModelbayError) else internal_error(exc, log)
    headers = [(b"content-type", b"application/json")]
    if isinstance(error, Overloaded):
        headers.append((b"retry-after", b"1"))
    elif isinstance(error, TooManyRequests):
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    elif isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", b'Bearer realm="modelbay"'))
    return status_of(error), headers, encode_json({"error": error.message})


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(handler: Endpoint) -> Endpoint:
    """`handler` with any exception it raises answered as an OIP error body (`error_response`)."""

    async def guarded_handler(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return error_response(exc)

    return guarded_handler


def error_response(exc: Exception) -> Response:
    """error_body as a Starlette Response."""
    status, headers, body = error_body(exc)
    return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})
