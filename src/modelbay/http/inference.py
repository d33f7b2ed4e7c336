"""The two hot routes, on raw ASGI: `POST /predict/{model}[/versions/{v}]` and OIP `.../infer`.

Everything else goes through Starlette (http/app.py). These two carry every prediction, so they
skip the framework's per-request objects: the path is split once, headers are read into one
dict, the body is read straight from `receive`, and the answer is sent as two ASGI messages.
(The profile that led here is in benchmarks/README.md.)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from modelbay.codecs import oip_json
from modelbay.codecs.oip_json import encode_json
from modelbay.errors import InvalidInput
from modelbay.http.body import header_dict, predict_examples, read_body
from modelbay.http.errors import error_body
from modelbay.logs import CLIENT_GONE, finish, request_id
from modelbay.runtime.context import ClientGone, RequestContext
from modelbay.runtime.dataplane import Dataplane

BINARY_HEADER = "inference-header-content-length"
ROUTING_KEY = "modelbay-routing-key"  # what a traffic split keeps on one version (RequestContext)
CALLER = "modelbay.caller"  # the ASGI scope's key for who called, as ModelbayApp's access check found
_JSON = [(b"content-type", b"application/json")]
_BINARY = (b"content-type", b"application/octet-stream")
_BINARY_HEADER = BINARY_HEADER.encode()
MODEL_VERSION = b"x-model-version"  # which version answered: every answer of a hot route says it
REQUEST_ID = b"x-request-id"  # the request's id (modelbay.logs.request_id): every answer says it
# What a hot route's trace span and access line call it: by kind, and whether a version is named.
_CALLS = {
    ("predict", False): "POST /predict/{model}",
    ("predict", True): "POST /predict/{model}/versions/{version}",
    ("infer", False): "POST /v2/models/{model}/infer",
    ("infer", True): "POST /v2/models/{model}/versions/{version}/infer",
}


def match(path: str) -> tuple[str, str, str | None] | None:
    """("predict" | "infer", model, version) for a hot route's path, else None.

    Paths: /predict/M, /predict/M/versions/V, /v2/models/M/infer, /v2/models/M/versions/V/infer.
    """
    parts = path.split("/")
    count = len(parts)
    if count >= 3 and parts[1] == "predict":
        if count == 3 and parts[2]:
            return "predict", parts[2], None
        if count == 5 and parts[3] == "versions" and parts[2] and parts[4]:
            return "predict", parts[2], parts[4]
        return None
    if count >= 5 and parts[1] == "v2" and parts[2] == "models" and parts[-1] == "infer":
        if count == 5 and parts[3]:
            return "infer", parts[3], None
        if count == 7 and parts[4] == "versions" and parts[3] and parts[5]:
            return "infer", parts[3], parts[5]
    return None


class InferenceRoutes:
    """Serves the hot routes of `dataplane`; errors become OIP error bodies (http/errors.py)."""

    def __init__(self, dataplane: Dataplane, max_body_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, route: tuple[str, str, str | None]
    ) -> None:
        """Answer one request on a hot route; `route` is what `match` returned for its path. The
        answer carries `x-request-id`; its access line and trace end once it is sent."""
        arrived = time.monotonic()
        kind, model, version = route
        headers = header_dict(scope)
        context = _context(scope, receive, headers)
        call = _CALLS[kind, version is not None]
        if self.dataplane.tracing is not None:
            self.dataplane.tracing.start(context, call, arrived)
        answered, error = version or "", None
        try:
            if kind == "predict":
                answered, extra, body = await self._predict(scope, receive, context, model, version)
            else:
                answered, extra, body = await self._infer(receive, context, model, version)
            status = 200
        except (ClientDisconnect, ClientGone):
            finish(context, "http", call, model, answered, CLIENT_GONE, arrived)
            return
        except Exception as exc:
            status, extra, body = error_body(exc)
            error = str(exc) if status >= 500 else None
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *extra,
                    (b"content-length", str(len(body)).encode()),
                    (REQUEST_ID, context.request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        finish(context, "http", call, model, answered, status, arrived, error)

    async def _predict(
        self, scope: Scope, receive: Receive, context: RequestContext, model: str, version: str | None
    ) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
        """(the version that answered, the answer's headers, its body)."""
        body = await read_body(receive, context.headers, self.max_body_bytes)
        span = context.span
        began = time.monotonic()
        examples, single = await predict_examples(scope, context.headers, body)
        if span is not None:
            span.phase("decode", began, time.monotonic())
        result = await self.dataplane.predict(model, version, examples, context)
        began = time.monotonic()
        predictions = result.predictions[0] if single else result.predictions
        answer = {"model": result.model, "version": result.version, "predictions": predictions}
        if result.defaults:
            answer["default_predictions"] = result.defaults
        content = encode_json(answer)
        if span is not None:
            span.phase("encode", began, time.monotonic())
        return result.version, [*_JSON, (MODEL_VERSION, result.version.encode())], content

    async def _infer(
        self, receive: Receive, context: RequestContext, model: str, version: str | None
    ) -> tuple[str, list[tuple[bytes, bytes]], bytes]:
        """(the version that answered, the answer's headers, its body)."""
        header_length = _header_length(context.headers)
        body = await read_body(receive, context.headers, self.max_body_bytes)
        span = context.span
        began = time.monotonic()
        request, binary = oip_json.decode_request(body, model, version, header_length)
        if span is not None:
            span.phase("decode", began, time.monotonic())
        response = await self.dataplane.infer(request, context)
        began = time.monotonic()
        content, json_length = oip_json.encode_response(response, binary)
        if span is not None:
            span.phase("encode", began, time.monotonic())
        answered = response.model_version
        version_header = (MODEL_VERSION, answered.encode())
        if json_length is None:
            return answered, [*_JSON, version_header], content
        return answered, [_BINARY, (_BINARY_HEADER, str(json_length).encode()), version_header], content


def _context(scope: Scope, receive: Receive, headers: dict[str, str]) -> RequestContext:
    """The request's context: its client watched through `receive`, who called (the API key's
    name, else the client's address), its id, trace and routing key."""
    caller = scope.get(CALLER)
    if caller is None:
        client = scope.get("client")
        caller = client[0] if client else ""
    return RequestContext(
        watch=functools.partial(_client_gone, receive),
        caller=caller,
        trace=headers.get("traceparent"),
        routing_key=headers.get(ROUTING_KEY),
        headers=headers,
        request_id=request_id(headers.get("x-request-id")),
    )


def _header_length(headers: Mapping[str, str]) -> int | None:
    """The OIP binary extension's JSON header length, or None for a plain JSON body.

    Raises InvalidInput unless the value is ASCII digits ("²" passes str.isdigit, not int()).
    """
    value = headers.get(BINARY_HEADER)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, got {value!r}")
    return int(value)


async def _client_gone(receive: Receive) -> bool:
    """True once the client has gone: what `receive` says after the body was read (the ASGI
    `http.disconnect` message). Awaited only for a request still unanswered after
    `WATCH_AFTER_S` (RequestContext.watch), so a request nobody waits for leaves the model's
    queue instead of filling it (issue 9, item 2)."""
    message = await receive()
    return bool(message["type"] == "http.disconnect")
