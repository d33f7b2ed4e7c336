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
  GET  /openapi.json, /docs                          the API description
  GET  /metrics                                     Prometheus metrics (modelbay.metrics)
Every error body is `{"error": "..."}` with the status of `modelbay.http.errors.STATUS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from modelbay.codecs.oip_json import encode_json
from modelbay.http.errors import error_response, json_response
from modelbay.http.inference import InferenceRoutes, match
from modelbay.http.openapi import docs_page, openapi_document
from modelbay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelbay.runtime.dataplane import Dataplane

Endpoint = Callable[[Request], Awaitable[Response]]


def _truth(value: bool) -> Response:
    """OIP health answer: an empty body, 200 for true and 400 for false."""
    return Response(status_code=200 if value else 400)


Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def create_app(
    dataplane: Dataplane, max_body_bytes: int = 16 * 1024 * 1024, lifespan: Lifespan | None = None
) -> ModelbayApp:
    """The ASGI app over `dataplane`.

    max_body_bytes: largest request body accepted; larger ones get 413.
    lifespan: what runs around serving; by default it starts and stops the dataplane's batchers
              (the Server passes one that also runs the gRPC door on the same event loop).
    """

    def endpoint(handler: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return error_response(exc)

        return guarded

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

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page(document))

    async def root(request: Request) -> Response:
        return RedirectResponse("/docs")

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
        Route("/", root),
        Route("/openapi.json", openapi),
        Route("/docs", docs),
        Route("/metrics", metrics),
    ]
    for ref in (model, versioned):
        routes += [
            Route(f"/v2/models{ref}", endpoint(model_metadata)),
            Route(f"/v2/models{ref}/ready", endpoint(model_ready)),
        ]
    routes += [
        Route("/v2", endpoint(server_metadata)),
        Route("/v2/health/live", endpoint(live)),
        Route("/v2/health/ready", endpoint(ready)),
    ]
    starlette = Starlette(routes=routes, lifespan=lifespan or dataplane_only)
    return ModelbayApp(starlette, InferenceRoutes(dataplane, max_body_bytes))


class ModelbayApp:
    """The ASGI app: the two hot POST routes (http/inference.py) served directly, all else by Starlette.

    `starlette` also runs the lifespan (batchers, gRPC) and the docs.
    """

    def __init__(self, starlette: Starlette, inference: InferenceRoutes) -> None:
        self.starlette = starlette
        self.inference = inference

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry: a hot route to InferenceRoutes (405 unless POST), the rest to Starlette."""
        if scope["type"] == "http":
            route = match(scope["path"])
            if route is not None:
                if scope["method"] == "POST":
                    await self.inference(scope, receive, send, route)
                else:
                    await _method_not_allowed(scope["method"], send)
                return
        await self.starlette(scope, receive, send)


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
