"""The Open Inference Protocol model repository extension over REST, as Triton defines it.

  POST /v2/repository/index                   [{"name", "version", "state", "reason"}, ...]
  POST /v2/repository/models/{model}/load     load (or reload) the model; 200 once it serves
  POST /v2/repository/models/{model}/unload   stop serving it once its requests are done

Bodies are optional JSON objects: the index takes {"ready": bool}; load and unload take
{"parameters": {...}}. The API manages the server, so it answers only loopback clients until API
keys exist (issue 11): 403 otherwise. Load's `config` and `file:<path>` parameters (a model sent
with the request) are not supported yet: 400.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelbay.errors import InvalidInput
from modelbay.http.body import decode_json, header_dict, read_body
from modelbay.http.errors import Endpoint, guarded, json_response
from modelbay.runtime.dataplane import Dataplane
from modelbay.runtime.management import check_manager, refuse_model_upload


def repository_routes(dataplane: Dataplane, max_body_bytes: int) -> list[Route]:
    """The extension's three routes over `dataplane`; bodies are read within `max_body_bytes`."""

    async def index(request: Request) -> Response:
        body = await _body(request, max_body_bytes)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f'"ready" must be true or false, got {ready!r}')
        rows = dataplane.repository_index(ready)
        return json_response(
            [{"name": r.name, "version": r.version, "state": str(r.state), "reason": r.reason} for r in rows]
        )

    async def load(request: Request) -> Response:
        body = await _body(request, max_body_bytes)
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f'"parameters" must be an object, got {type(parameters).__name__}')
        refuse_model_upload(parameters)
        await dataplane.load_model(request.path_params["model"])
        return json_response({})

    async def unload(request: Request) -> Response:
        await _body(request, max_body_bytes)
        await dataplane.unload_model(request.path_params["model"])
        return json_response({})

    return [
        Route("/v2/repository/index", _managed(index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _managed(load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _managed(unload), methods=["POST"]),
    ]


def _managed(handler: Endpoint) -> Endpoint:
    """`handler` for loopback callers only (Forbidden otherwise), its errors as OIP error bodies."""

    async def checked(request: Request) -> Response:
        check_manager(request.client.host if request.client else "")
        return await handler(request)

    return guarded(checked)


async def _body(request: Request, limit: int) -> dict[str, Any]:
    """The optional JSON object body. Raises InvalidInput for anything else, PayloadTooLarge past `limit`."""
    raw = await read_body(request.receive, header_dict(request.scope), limit)
    if not raw.strip():
        return {}
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise InvalidInput(f"expected a JSON object, got {type(value).__name__}")
    return value
