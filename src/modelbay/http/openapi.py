"""The OpenAPI 3.1 document of the HTTP API, and a docs page that needs no CDN (edge boxes are offline)."""

from __future__ import annotations

import html
from typing import Any

from modelbay import __version__

_ERROR = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        }
    },
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {
            "type": "string",
            "enum": [
                "BOOL",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "FP16",
                "FP32",
                "FP64",
                "BYTES",
            ],
        },
        "parameters": {"type": "object"},
        "data": {"description": "row-major data, flat or nested; booleans for BOOL, strings for BYTES"},
    },
}
_METADATA_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _health(summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "tags": ["health"],
            "responses": {"200": {"description": "true"}, "400": {"description": "false"}},
        }
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route `modelbay.http.app.create_app` serves."""
    predict = {
        "post": {
            "summary": "Predict: one image (raw body or multipart), or JSON {input} / {inputs}",
            "tags": ["predict"],
            "requestBody": {
                "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "input": {"description": "one example: base64 image or a nested list"},
                                "inputs": {"type": "array", "description": "several examples"},
                            },
                        }
                    },
                }
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "model": {"type": "string"},
                            "version": {"type": "string"},
                            "predictions": {},
                            "default_predictions": {
                                "type": "array",
                                "items": {"type": "integer"},
                                "description": "indices of predictions that are the model's "
                                "default_output (they would have missed the SLO); absent when none",
                            },
                        },
                    }
                ),
                "400": _ERROR,
                "404": _ERROR,
                "413": _ERROR,
                "415": _ERROR,
                "500": _ERROR,
                "503": _ERROR,
            },
        }
    }
    metadata = {
        "get": {
            "summary": "OIP model metadata",
            "tags": ["model"],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "versions": {"type": "array", "items": {"type": "string"}},
                            "platform": {"type": "string"},
                            "inputs": {"type": "array", "items": _METADATA_TENSOR},
                            "outputs": {"type": "array", "items": _METADATA_TENSOR},
                        },
                    }
                ),
                "404": _ERROR,
            },
        }
    }
    ready = {
        "get": {
            "summary": "OIP model ready",
            "tags": ["model"],
            "responses": {
                "200": {"description": "ready"},
                "400": {"description": "not ready"},
                "404": _ERROR,
            },
        }
    }
    infer = {
        "post": {
            "summary": "OIP inference (JSON tensors)",
            "tags": ["model"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["inputs"],
                            "properties": {
                                "id": {"type": "string"},
                                "parameters": {"type": "object"},
                                "inputs": {"type": "array", "items": _TENSOR},
                                "outputs": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "name": {"type": "string"},
                                            "parameters": {"type": "object"},
                                        },
                                    },
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "model_name": {"type": "string"},
                            "model_version": {"type": "string"},
                            "id": {"type": "string"},
                            "outputs": {"type": "array", "items": _TENSOR},
                        },
                    }
                ),
                "400": _ERROR,
                "404": _ERROR,
                "413": _ERROR,
                "500": _ERROR,
                "503": _ERROR,
            },
        }
    }
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "summary": "OIP server metadata",
                "tags": ["health"],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "extensions": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    )
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "tags": ["health"],
                "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
            }
        },
        "/v2/health/live": _health("OIP server live"),
        "/v2/health/ready": _health("OIP server ready: every model is ready"),
    }
    for suffix, params in (("{model}", [_MODEL]), ("{model}/versions/{version}", [_MODEL, _VERSION])):
        for path, item in (
            (f"/predict/{suffix}", predict),
            (f"/v2/models/{suffix}", metadata),
            (f"/v2/models/{suffix}/ready", ready),
            (f"/v2/models/{suffix}/infer", infer),
        ):
            paths[path] = {method: {**operation, "parameters": params} for method, operation in item.items()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelbay",
            "version": __version__,
            "description": "Prediction service: a simple door and the Open Inference Protocol v2 (REST).",
        },
        "paths": paths,
    }


def docs_page(document: dict[str, Any]) -> str:
    """A plain HTML page listing every operation of `document` (no external scripts or styles)."""
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>modelbay API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em 1em}</style></head><body>"
        f"<h1>modelbay {html.escape(document['info']['version'])}</h1>"
        "<p>The full description is at <a href='/openapi.json'>/openapi.json</a>.</p>"
        f"<table>{''.join(rows)}</table></body></html>"
    )
