"""A model version's ONNX file over HTTP: `GET /v2/models/{model}[/versions/{version}]/onnx`.

modelbay's own route (the OIP has none): a client keeps the file as a local copy that answers
when the server cannot (modelbay.client.local). It lives under /v2/models/{model}, so the access
check treats it as inference on that model (modelbay.auth.access: with --auth, an infer key that
names the model or none, or an admin key). The answer is the file (application/octet-stream)
with `x-model-version`, the version it belongs to (the default one when the path names none),
and Starlette's ETag / Last-Modified; HEAD answers the headers alone. 404 when the version
offers no ONNX file (registry/downloads.py says which and why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from modelbay.http.errors import guarded
from modelbay.registry.downloads import onnx_file

if TYPE_CHECKING:  # openapi.py imports this module for its document: keep it light
    from modelbay.runtime.dataplane import Dataplane

_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_ERROR = {"description": "no such model or version, or it offers no ONNX file", "content": {}}


def download_routes(dataplane: Dataplane) -> list[Route]:
    """The download routes over `dataplane`'s registry."""

    async def onnx(request: Request) -> Response:
        name = request.path_params["model"]
        served = dataplane.registry.get(name, request.path_params.get("version"))
        return FileResponse(
            onnx_file(served),
            media_type="application/octet-stream",
            filename=f"{name}-{served.version}.onnx",
            headers={"x-model-version": served.version},
        )

    return [
        Route("/v2/models/{model}/onnx", guarded(onnx), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/onnx", guarded(onnx), methods=["GET"]),
    ]


def openapi_paths() -> dict[str, Any]:
    """The routes' entries of the OpenAPI document (modelbay.http.openapi)."""
    operation = {
        "summary": "The model version's ONNX file, for a local copy (modelbay's own)",
        "tags": ["model"],
        "responses": {
            "200": {
                "description": "the ONNX file",
                "headers": {
                    "x-model-version": {
                        "description": "the version it belongs to",
                        "schema": {"type": "string"},
                    }
                },
                "content": {"application/octet-stream": {}},
            },
            "404": _ERROR,
        },
    }
    return {
        "/v2/models/{model}/onnx": {"get": {**operation, "parameters": [_MODEL]}},
        "/v2/models/{model}/versions/{version}/onnx": {
            "get": {**operation, "parameters": [_MODEL, _VERSION]}
        },
    }
