"""The one table from modelbay errors to gRPC status codes, and the trailing metadata some carry."""

from __future__ import annotations

import logging

import grpc

from modelbay.errors import (
    DeadlineExceeded,
    Forbidden,
    InferenceFailed,
    InvalidInput,
    ModelbayError,
    ModelLoadError,
    ModelNotFound,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    internal_error,
    nearest,
)

log = logging.getLogger("modelbay.grpc")

CODES: dict[type[ModelbayError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    TooManyRequests: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    InferenceFailed: grpc.StatusCode.INTERNAL,
    ModelLoadError: grpc.StatusCode.INTERNAL,
}


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """gRPC code and details for any exception; an unexpected one is logged with an error id."""
    error = exc if isinstance(exc, ModelbayError) else internal_error(exc, log)
    return nearest(CODES, error, grpc.StatusCode.INTERNAL), error.message


def trailers_of(exc: Exception) -> tuple[tuple[str, str], ...]:
    """Trailing metadata for the error `exc`: `retry-after` (seconds) for TooManyRequests, which
    also tells a client its RESOURCE_EXHAUSTED from gRPC's own for a message over the size limit."""
    if isinstance(exc, TooManyRequests):
        return (("retry-after", str(exc.retry_after_s)),)
    return ()
