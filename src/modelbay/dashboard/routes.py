"""The dashboard's routes (see the package docstring), added to the app by modelbay.http.app."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from modelbay.dashboard.summary import PATH as SUMMARY_PATH
from modelbay.dashboard.summary import summary
from modelbay.http.errors import guarded, json_response
from modelbay.runtime.dataplane import Dataplane

STATIC = Path(__file__).parent / "static"
STATIC_URL = "/dashboard/static"
# The pages load only what the server serves: a browser refuses anything else (a CDN, a tracker).
# Inline styles: uPlot and Swagger UI set element styles; data: and blob: images: Swagger UI's
# icons and the playground's preview of a dropped image.
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def dashboard_routes(dataplane: Dataplane, document: dict[str, Any], keys: bool) -> list[BaseRoute]:
    """The routes of the dashboard over `dataplane`; `document` is the OpenAPI document the API
    reference lists (without JavaScript, as a table); `keys`: the server checks API keys."""
    index_page = (STATIC / "index.html").read_text()
    reference_page = (STATIC / "reference.html").read_text().replace("<!-- routes -->", route_rows(document))

    async def index(request: Request) -> Response:
        return HTMLResponse(index_page, headers=PAGE_HEADERS)

    async def reference(request: Request) -> Response:
        return HTMLResponse(reference_page, headers=PAGE_HEADERS)

    async def summary_json(request: Request) -> Response:
        host = request.client.host if request.client is not None else ""
        return json_response(summary(dataplane, keys, host))

    return [
        Route("/", index),
        Route("/docs", reference),
        Route(SUMMARY_PATH, guarded(summary_json)),
        Mount(STATIC_URL, StaticFiles(directory=STATIC), name="dashboard-static"),
    ]


def route_rows(document: dict[str, Any]) -> str:
    """Every operation of `document` as an HTML table's rows: method, path, summary (escaped)."""
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            )
    return "\n".join(rows)
