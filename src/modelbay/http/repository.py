"""The Open Inference Protocol model repository extension over REST, as Triton defines it.

  POST /v2/repository/index                   [{"name", "version", "state", "reason"}, ...]
  POST /v2/repository/models/{model}/load     load (or reload) the model; 200 once it serves
  POST /v2/repository/models/{model}/unload   stop serving it once its requests are done
  POST /v2/repository/models/{model}/default  modelbay's own: which version answers unversioned
                                              calls; {"name", "version"}
  GET  /v2/repository/models/{model}/traffic  modelbay's own: the model's traffic policy (split,
  POST /v2/repository/models/{model}/traffic  sticky, shadow) and how it applies now; POST sets
                                              it (the policy as JSON, null clears it)
  GET  /v2/repository/models/{model}/versions/{version}/log
                                              modelbay's own: the version's state and the log
                                              lines of its last load (registry/load_log.py)

Bodies are optional JSON objects: the index takes {"ready": bool}; load and unload take
{"parameters": {...}}: for load, Triton's `config` (a JSON object as a string) and
`file:<version>/<path>` (a file's content in base64) read by runtime/management.load_request,
within `max_upload_bytes`; default takes {"version": "2"}, or null (or nothing) for the highest.
The API manages the server: ModelbayApp checks every `/v2/repository` request first
(modelbay.auth.access): an admin API key with `--auth`, else a loopback client (403 otherwise).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelbay.errors import InvalidInput, ModelNotFound, PayloadTooLarge
from modelbay.http.body import decode_json, header_dict, read_body
from modelbay.http.errors import Endpoint, guarded, json_response
from modelbay.registry.traffic import traffic_json, traffic_policy
from modelbay.runtime.dataplane import Dataplane
from modelbay.runtime.management import load_request


def repository_routes(
    dataplane: Dataplane, max_body_bytes: int, max_upload_bytes: int = 256 * 1024 * 1024
) -> list[Route]:
    """The extension's routes over `dataplane`. Bodies are read within `max_body_bytes`, but a
    load's within `max_upload_bytes` (it may carry a model, base64 in JSON: files of up to about
    3/4 of it); larger ones get 413."""

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
        try:
            body = await _body(request, max_upload_bytes)
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(f"{exc.message} (--max-upload-bytes)") from None
        parameters = body.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise InvalidInput(f'"parameters" must be an object, got {type(parameters).__name__}')
        name = request.path_params["model"]
        load = load_request(name, parameters)
        await dataplane.load_model(name, load.config, load.files)
        return json_response({})

    async def unload(request: Request) -> Response:
        await _body(request, max_body_bytes)
        await dataplane.unload_model(request.path_params["model"])
        return json_response({})

    async def default(request: Request) -> Response:
        body = await _body(request, max_body_bytes)
        version = body.get("version")
        if version is not None and not isinstance(version, str):
            raise InvalidInput(f'"version" must be a string, or null for the highest; got {version!r}')
        name = request.path_params["model"]
        dataplane.set_default_version(name, version)
        return json_response({"name": name, "version": dataplane.registry.default_version(name)})

    async def traffic(request: Request) -> Response:
        name = request.path_params["model"]
        if request.method == "POST":
            raw = await read_body(request.receive, header_dict(request.scope), max_body_bytes)
            if not raw.strip():
                raise InvalidInput("send the traffic policy as JSON (null clears it); GET reads it")
            dataplane.set_traffic(name, traffic_policy(decode_json(raw)))
        registry = dataplane.registry
        state = traffic_json(registry.traffic(name), registry.routes.get(name))
        return json_response({"name": name, **state})

    async def version_log(request: Request) -> Response:
        name, version = request.path_params["model"], request.path_params["version"]
        rows = dataplane.repository_index()  # Unavailable without a model manager
        row = next((r for r in rows if (r.name, r.version) == (name, version)), None)
        if row is None or dataplane.manager is None:
            raise ModelNotFound(f"no version {version!r} of model {name!r} in the repository index")
        lines = dataplane.manager.load_log.lines(name, version)
        return json_response(
            {"name": name, "version": version, "state": str(row.state), "reason": row.reason, "lines": lines}
        )

    return [
        Route("/v2/repository/index", _managed(index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _managed(load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _managed(unload), methods=["POST"]),
        Route("/v2/repository/models/{model}/default", _managed(default), methods=["POST"]),
        Route("/v2/repository/models/{model}/traffic", _managed(traffic), methods=["GET", "POST"]),
        Route("/v2/repository/models/{model}/versions/{version}/log", _managed(version_log)),
    ]


def _managed(handler: Endpoint) -> Endpoint:
    """`handler` with its errors as OIP error bodies. Who may manage (an admin key, or loopback
    without keys) was checked before, for every /v2/repository path (ModelbayApp, modelbay.auth)."""
    return guarded(handler)


async def _body(request: Request, limit: int) -> dict[str, Any]:
    """The optional JSON object body. Raises InvalidInput for anything else, PayloadTooLarge past `limit`."""
    raw = await read_body(request.receive, header_dict(request.scope), limit)
    if not raw.strip():
        return {}
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise InvalidInput(f"expected a JSON object, got {type(value).__name__}")
    return value
