"""Logs: the server's log lines as text or JSON, and one access log line per request.

Levels mean: DEBUG what a developer tracing a problem wants; INFO what happens in normal operation
(a model loaded, the server listening, every request's access line); WARNING something went wrong
that the server worked around (a worker restarted, a reload that failed while the old version
serves); ERROR a request or a model failed on the server's side (a model's exception, with its
error id). A client's mistake (4xx) is not a warning: its access line says its status.

The access line (logger `modelbay.access`, INFO) of every request over HTTP or gRPC carries: the
request id, the protocol and what was called, the model and the version that answered, the status
(HTTP status; for gRPC the status code's number, 0 OK), the latency in milliseconds from the
request's arrival to its answer, the rows of the batch that answered it (0: none, e.g. a cache hit
or a refused request) and the caller: the API key's name with `--auth`, else the client's address.
Never the key, never a header's value. Off unless `--access-log` (Settings.access_log): through
Python's logging a line per request costs a small model half its requests/s (README, "Traces and logs").

The request id is the client's `x-request-id` (HTTP header or gRPC metadata) when it is 1 to 128
characters of letters, digits and `._:-` (anything else could forge or break log lines, and is
replaced), else 16 hex digits made here (`request_id`); the answer carries it back in `x-request-id`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from typing import Any

from modelbay.runtime.context import RequestContext

ACCESS = logging.getLogger("modelbay.access")
REQUEST_ID = "x-request-id"
CLIENT_GONE = 499  # the status an access line gives a request whose client left before its answer (nginx's)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The fields of an access line, in the order the text line shows them.
ACCESS_FIELDS = (
    "request_id",
    "protocol",
    "call",
    "model",
    "version",
    "status",
    "latency_ms",
    "batch_size",
    "caller",
)


def request_id(given: str | None) -> str:
    """The id of a request: `given` (the client's x-request-id) when it is a safe id, else a new
    one: 16 hex digits, this process's random prefix (8) and its count of ids made (8), unique
    across processes and restarts without a random draw per request (0.3 us instead of 0.7)."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_prefix}{next(_made) & 0xFFFFFFFF:08x}"


def _new_prefix() -> None:
    global _prefix, _made
    _prefix, _made = secrets.token_hex(4), itertools.count()


_prefix, _made = "", itertools.count()
_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)  # a forked worker must not repeat its parent's ids


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, and an access
    line's fields at the top level; an exception's traceback under `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info", format: str = "text", access_log: bool = False) -> None:
    """Send every log line (modelbay's, uvicorn's, the libraries') to stderr as `format` ("text"
    or "json") from `level` up; `access_log` turns the access lines on. Replaces the root
    logger's handlers, so calling it again (a worker process) gives the same result."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    ACCESS.disabled = not access_log
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own handlers, if any
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def finish(
    context: RequestContext,
    protocol: str,
    call: str,
    model: str,
    version: str,
    status: int,
    arrived: float,
    error: str | None = None,
) -> None:
    """The end of a request, once its answer is sent (`arrived`: when it came, time.monotonic()):
    its trace's SERVER span ends (when traced, runtime/tracing.py; `error`: a server-side
    failure's description, the span's status is then ERROR) and its access line is written when
    access lines are on (module docstring; off, one level check)."""
    span = context.span
    if span is not None:
        span.finish(
            {
                "model_name": model,
                "model_version": version,
                "batch_size": context.batch_size,
                "modelbay.request_id": context.request_id,
                ("http.response.status_code" if protocol == "http" else "rpc.grpc.status_code"): status,
            },
            error,
        )
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": context.request_id,
        "protocol": protocol,
        "call": call,
        "model": model,
        "version": version,
        "status": status,
        "latency_ms": round((time.monotonic() - arrived) * 1000, 3),
        "batch_size": context.batch_size,
        "caller": context.caller,
    }
    text = " ".join(f"{name}={fields[name] if fields[name] != '' else '-'}" for name in ACCESS_FIELDS)
    ACCESS.info(text, extra={"access": fields})
