"""The HTTP door: an ASGI app that translates requests into Dataplane calls.

The two POST routes that carry predictions are served on raw ASGI (http/inference.py, for speed);
Starlette serves the rest and runs the lifespan.

Routes:
  POST /predict/{model}[/versions/{version}]        the simple door (image bytes, multipart, JSON)
  GET  /v2                                          OIP server metadata
  GET  /v2/health/live, /v2/health/ready            OIP health (200 true, 400 false, empty body)
  GET  /v2/models/{model}[/versions/{version}]      OIP model metadata
  GET  /v2/models/{model}[/versions/{version}]/ready
  POST /v2/models/{model}[/versions/{version}]/infer
  GET  /v2/models/{model}[/versions/{version}]/onnx the version's ONNX file (http/download.py)
  GET  /openapi.json                                the API description
  GET  /, /docs, /dashboard/...                     the dashboard, the API reference (modelbay.dashboard)
  GET  /metrics                                     Prometheus metrics (modelbay.metrics)
  POST /v2/repository/index, /v2/repository/models/{model}/load|unload
                                                    OIP model repository extension (http/repository.py)
Every error body is `{"error": "..."}` with the status of `modelbay.http.errors.STATUS`.
Who may call is checked once for every route, hot or not, by ModelbayApp (modelbay.auth.access).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelbay.auth.access import Access, Action, authorize, credential
from modelbay.codecs.oip_json import encode_json
from modelbay.dashboard import dashboard_routes
from modelbay.errors import ModelbayError, Unavailable
from modelbay.http.download import download_routes
from modelbay.http.errors import error_body, guarded, json_response
from modelbay.http.inference import CALLER, InferenceRoutes, match
from modelbay.http.openapi import openapi_document
from modelbay.http.repository import repository_routes
from modelbay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelbay.runtime.dataplane import Dataplane

log = logging.getLogger("modelbay.http")


def _truth(value: bool) -> Response:
    """OIP health answer: an empty body, 200 for true and 400 for false."""
    return Response(status_code=200 if value else 400)


Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def create_app(
    dataplane: Dataplane,
    max_body_bytes: int = 16 * 1024 * 1024,
    lifespan: Lifespan | None = None,
    *,
    max_upload_bytes: int = 256 * 1024 * 1024,
    access: Access | None = None,
) -> ModelbayApp:
    """The ASGI app over `dataplane`.

    max_body_bytes: largest request body accepted; larger ones get 413.
    max_upload_bytes: largest body of a model repository load (a model sent with it), instead.
    access: the API keys every request is checked against (`--auth`); None: no keys, everything
              open but the model repository API, which answers loopback clients only.
    lifespan: what runs around serving; by default it starts and stops the dataplane's batchers
              (the Server passes one that also runs the gRPC door on the same event loop).
    """

    def model_ref(request: Request) -> tuple[str, str | None]:
        return request.path_params["model"], request.path_params.get("version")

    async def server_metadata(request: Request) -> Response:
        return json_response(dataplane.server_metadata())

    async def live(request: Request) -> Response:
        return _truth(dataplane.live())

    async def ready(request: Request) -> Response:
        return _truth(dataplane.ready())

    async def metrics(request: Request) -> Response:
        return Response(dataplane.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def model_metadata(request: Request) -> Response:
        return json_response(dataplane.model_metadata(*model_ref(request)))

    async def model_ready(request: Request) -> Response:
        return _truth(dataplane.model_ready(*model_ref(request)))

    document = openapi_document()

    async def openapi(request: Request) -> Response:
        return json_response(document)

    @contextlib.asynccontextmanager
    async def dataplane_only(app: Starlette) -> AsyncIterator[None]:
        await dataplane.start()
        try:
            yield
        finally:
            await dataplane.stop()

    model = "/{model}"
    versioned = "/{model}/versions/{version}"
    routes = [
        Route("/openapi.json", openapi),
        Route("/metrics", metrics),
        *dashboard_routes(dataplane, document, keys=access is not None),
    ]
    for ref in (model, versioned):
        routes += [
            Route(f"/v2/models{ref}", guarded(model_metadata)),
            Route(f"/v2/models{ref}/ready", guarded(model_ready)),
        ]
    routes += [
        Route("/v2", guarded(server_metadata)),
        Route("/v2/health/live", guarded(live)),
        Route("/v2/health/ready", guarded(ready)),
    ]
    routes += repository_routes(dataplane, max_body_bytes, max_upload_bytes)
    routes += download_routes(dataplane)
    starlette = Starlette(
        routes=routes,
        lifespan=lifespan or dataplane_only,
        exception_handlers={HTTPException: _http_error},
    )
    return ModelbayApp(starlette, InferenceRoutes(dataplane, max_body_bytes), access)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 / 405 as OIP error bodies, like every other error."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; GET /docs lists the routes"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    return json_response({"error": message}, exc.status_code, headers=dict(exc.headers or {}))


class ModelbayApp:
    """The ASGI app: the two hot POST routes (http/inference.py) served directly, all else by Starlette.

    `starlette` also runs the lifespan (batchers, gRPC) and the docs. `drain` is called once
    when the server starts shutting down (modelbay.server): the models stop taking new
    requests, each `on_drain` hook runs (the gRPC door stops with the same grace), and requests
    still in flight after the drain deadline are answered 503 / UNAVAILABLE.
    Every request passes `authorize` (modelbay.auth.access) with `access` first, before its body
    is read; who called goes into the ASGI scope under CALLER (RequestContext.caller).
    """

    def __init__(
        self, starlette: Starlette, inference: InferenceRoutes, access: Access | None = None
    ) -> None:
        self.starlette = starlette
        self.inference = inference
        self.access = access
        self.on_drain: list[Callable[[float], Awaitable[None]]] = []
        self._drain_tasks: list[asyncio.Future[None]] = []
        self._draining = False

    def drain(self, graceful_timeout_s: float) -> None:
        """Begin the graceful shutdown on the running loop; returns at once.

        Requests in flight get `graceful_timeout_s` seconds to finish, then Unavailable (503).
        """
        if self._draining:
            return
        self._draining = True
        dataplane = self.inference.dataplane
        for model in dataplane.registry:
            model.ready = False  # new requests: 503; the load balancer sees not ready
        log.info(
            "draining: %d request(s) in flight get %.1f s to finish", dataplane.in_flight, graceful_timeout_s
        )
        loop = asyncio.get_running_loop()
        loop.call_later(graceful_timeout_s, self._drain_deadline)
        self._drain_tasks = [asyncio.ensure_future(hook(graceful_timeout_s)) for hook in self.on_drain]

    async def drained(self) -> bool:
        """Wait for the `on_drain` hooks to finish; False when no drain was begun."""
        if not self._draining:
            return False
        await asyncio.gather(*self._drain_tasks, return_exceptions=True)
        return True

    def _drain_deadline(self) -> None:
        ended = self.inference.dataplane.end_in_flight(
            Unavailable("the server shut down before the model answered (graceful_timeout_s passed); retry")
        )
        if ended:
            log.warning("drain deadline passed: %d request(s) still in flight answered 503", ended)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: who called checked (`_authorize`), then a hot route to InferenceRoutes (405
        unless POST), the rest to Starlette. Without API keys a hot route skips the check: it is open."""
        if scope["type"] == "http":
            route = match(scope["path"])
            if route is None or self.access is not None:
                try:
                    scope[CALLER] = self._authorize(scope, route)
                except ModelbayError as exc:
                    await _send_error(send, exc)
                    return
            if route is not None:
                if scope["method"] == "POST":
                    await self.inference(scope, receive, send, route)
                else:
                    await _method_not_allowed(scope["method"], send)
                return
        await self.starlette(scope, receive, send)

    def _authorize(self, scope: Scope, route: tuple[str, str, str | None] | None) -> str:
        """Who sent the HTTP request of `scope` (the key's name, or the client's address), if it
        may; raises what modelbay.auth.access.authorize raises."""
        action, model = (Action.INFER, route[1]) if route is not None else route_action(scope["path"])
        client = scope.get("client")
        key = None
        if self.access is not None:
            authorization = api_key = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"x-api-key":
                    api_key = value.decode("latin-1")
            key = credential(authorization, api_key)
        return authorize(self.access, action, key, client[0] if client else "", model)


def route_action(path: str) -> tuple[Action, str | None]:
    """What a request to `path` does, for the access check, and the model it names: by prefix, so
    a route added later under one is covered too.

      /predict/{model}..., /v2/models/{model}...   INFER, the model
      /v2/repository...                             ADMIN (the model repository API)
      anything else                                 HEALTH (health, /v2, /metrics, docs, dashboard; or a 404)
    """
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "predict":
        return Action.INFER, parts[2]
    if len(parts) >= 3 and parts[1] == "v2":
        if parts[2] == "models" and len(parts) >= 4:
            return Action.INFER, parts[3]
        if parts[2] == "repository":
            return Action.ADMIN, None
    return Action.HEALTH, None


async def _send_error(send: Send, exc: ModelbayError) -> None:
    status, headers, body = error_body(exc)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _method_not_allowed(method: str, send: Send) -> None:
    body = encode_json({"error": f"method {method} is not allowed here; use POST"})
    await send(
        {
            "type": "http.response.start",
            "status": 405,
            "headers": [(b"content-type", b"application/json"), (b"allow", b"POST")],
        }
    )
    await send({"type": "http.response.body", "body": body})
