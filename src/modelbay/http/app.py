"""The HTTP door: an ASGI app (Starlette) that translates requests into Dataplane calls.

Routes:
  POST /predict/{model}[/versions/{version}]        the simple door (image bytes, multipart, JSON)
  GET  /v2                                          OIP server metadata
  GET  /v2/health/live, /v2/health/ready            OIP health (200 true, 400 false, empty body)
  GET  /v2/models/{model}[/versions/{version}]      OIP model metadata
  GET  /v2/models/{model}[/versions/{version}]/ready
  POST /v2/models/{model}[/versions/{version}]/infer
  GET  /openapi.json, /docs                          the API description
Every error body is `{"error": "..."}` with the status of `modelbay.http.errors.STATUS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from modelbay.codecs import oip_json
from modelbay.errors import InvalidInput
from modelbay.http.body import predict_examples, read_body
from modelbay.http.errors import error_response, json_response
from modelbay.http.openapi import docs_page, openapi_document
from modelbay.runtime.dataplane import Dataplane

Endpoint = Callable[[Request], Awaitable[Response]]


def _truth(value: bool) -> Response:
    """OIP health answer: an empty body, 200 for true and 400 for false."""
    return Response(status_code=200 if value else 400)


BINARY_HEADER = "Inference-Header-Content-Length"


def _header_length(request: Request) -> int | None:
    """The OIP binary extension's JSON header length, or None for a plain JSON body."""
    value = request.headers.get(BINARY_HEADER)
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"{BINARY_HEADER} must be a byte count, got {value!r}")
    return int(value)


Lifespan = Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]


def create_app(
    dataplane: Dataplane, max_body_bytes: int = 16 * 1024 * 1024, lifespan: Lifespan | None = None
) -> Starlette:
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

    async def predict(request: Request) -> Response:
        name, version = model_ref(request)
        body = await read_body(request, max_body_bytes)
        examples, single = await predict_examples(request, body)
        result = await dataplane.predict(name, version, examples)
        predictions = result.predictions[0] if single else result.predictions
        return json_response({"model": result.model, "version": result.version, "predictions": predictions})

    async def server_metadata(request: Request) -> Response:
        return json_response(dataplane.server_metadata())

    async def live(request: Request) -> Response:
        return _truth(dataplane.live())

    async def ready(request: Request) -> Response:
        return _truth(dataplane.ready())

    async def model_metadata(request: Request) -> Response:
        return json_response(dataplane.model_metadata(*model_ref(request)))

    async def model_ready(request: Request) -> Response:
        return _truth(dataplane.model_ready(*model_ref(request)))

    async def infer(request: Request) -> Response:
        name, version = model_ref(request)
        header_length = _header_length(request)
        body = await read_body(request, max_body_bytes)
        inference, binary = oip_json.decode_request(body, name, version, header_length)
        response = await dataplane.infer(inference)
        content, json_length = oip_json.encode_response(response, binary)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={BINARY_HEADER: str(json_length)}
        )

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
    routes = [Route("/", root), Route("/openapi.json", openapi), Route("/docs", docs)]
    for ref in (model, versioned):
        routes += [
            Route(f"/predict{ref}", endpoint(predict), methods=["POST"]),
            Route(f"/v2/models{ref}", endpoint(model_metadata)),
            Route(f"/v2/models{ref}/ready", endpoint(model_ready)),
            Route(f"/v2/models{ref}/infer", endpoint(infer), methods=["POST"]),
        ]
    routes += [
        Route("/v2", endpoint(server_metadata)),
        Route("/v2/health/live", endpoint(live)),
        Route("/v2/health/ready", endpoint(ready)),
    ]
    return Starlette(routes=routes, lifespan=lifespan or dataplane_only)
