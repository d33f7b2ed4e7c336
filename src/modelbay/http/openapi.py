"""The OpenAPI 3.1 document of the HTTP API (the dashboard's API reference at /docs renders it)."""

from __future__ import annotations

from typing import Any

from modelbay._version import __version__
from modelbay.dashboard.summary import openapi_paths as dashboard_paths
from modelbay.http.download import openapi_paths as download_paths
from modelbay.types import DATATYPES, MAX_DIMS

_ERROR = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        }
    },
}
# The tensor of a response: what the server sends (encode_response), whatever the request was.
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {
            "type": "array",
            "description": "row-major data, flat; booleans for BOOL, strings for BYTES",
        },
    },
}
# The tensor of a request, as strict as the JSON schema can say what the OIP JSON codec accepts
# (codecs/oip_json.py): every field present, a known datatype, a shape of non-negative integers
# (at most MAX_DIMS of them), data an array. What a schema cannot say (data that fits the shape and
# datatype, an input the model has, sizes within the limits) is still answered 400.
_REQUEST_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "maxItems": MAX_DIMS,
        },
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": {"type": "object"},
        "data": {
            "type": "array",
            "items": {"type": ["array", "number", "boolean", "string"]},
            "description": "row-major data, flat or nested; booleans for BOOL, strings for BYTES",
        },
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
_RAW_EXAMPLE = {"type": "string", "format": "binary", "minLength": 1}
_URL = {"type": "string", "format": "uri"}
# The ways to send POST /predict examples (http/body.py predict_examples). What the schema
# calls valid the door takes: `{}`, `{"inputs": []}` and a multipart body without a file are not.
_PREDICT_BODY = {
    "image/*": {"schema": _RAW_EXAMPLE},
    "application/octet-stream": {"schema": _RAW_EXAMPLE},
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": {**_RAW_EXAMPLE, "description": "one example per file part"}},
        }
    },
    "application/json": {
        "schema": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["input"],
                    "properties": {
                        "input": {
                            "description": "one example: a base64 image, or the tensor as a nested list"
                        }
                    },
                },
                {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "description": "several examples, at most the model's batching.max_queue_size",
                        }
                    },
                },
                {
                    "type": "object",
                    "required": ["url"],
                    "properties": {"url": {**_URL, "description": "one example by URL (url_inputs)"}},
                },
                {
                    "type": "object",
                    "required": ["urls"],
                    "properties": {
                        "urls": {
                            "type": "array",
                            "minItems": 1,
                            "items": _URL,
                            "description": "several examples by URL, at most url_inputs.max_urls",
                        }
                    },
                },
            ]
        }
    },
}
# `POST /predict/{model}?url=...` (repeat it for several), with no body: examples by URL, for a
# model whose settings have url_inputs (runtime/fetch.py).
_URL_QUERY = {
    "name": "url",
    "in": "query",
    "required": False,
    "schema": _URL,
    "description": "an example by URL (https; the model's url_inputs.allow_hosts), with no body",
}
# The OIP `$inference_request` as JSON (the binary extension, with its Inference-Header-Content-Length
# header, is not described here: a schema cannot tie the header to the body).
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "items": _REQUEST_TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
    },
}
# What the two inference routes answer besides 200 (http/errors.py STATUS): 400 a bad request,
# 404 no such model, 408 a body sent too slowly, 413 too large (body or examples), 415 an unknown
# encoding or media type, 500 the model failed (the body gives an error id), 503 overloaded or
# shutting down, 504 past the model's timeout_s.
_INFERENCE_ERRORS = {str(status): _ERROR for status in (400, 404, 408, 413, 415, 500, 503, 504)}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_REQUEST_ID = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "description": "the request's id in the access log and in the answer's x-request-id: kept when it "
    "is 1-128 characters of letters, digits and ._:-, else one is made",
    "schema": {"type": "string"},
}
_ANSWER_HEADERS = {
    "x-request-id": {"description": "the request id (given or made)", "schema": {"type": "string"}},
    "x-model-version": {"description": "the model version that answered", "schema": {"type": "string"}},
}
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
            "summary": "Predict: one image (raw body or multipart), JSON {input} / {inputs}, or by URL",
            "tags": ["predict"],
            "requestBody": {"required": False, "content": _PREDICT_BODY},
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
                **_INFERENCE_ERRORS,
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
                "content": {"application/json": {"schema": _INFER_REQUEST}},
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "model_name": {"type": "string"},
                            "model_version": {"type": "string"},
                            "id": {"type": "string"},
                            "parameters": {
                                "type": "object",
                                "description": "default_output: true when the model's default answered",
                            },
                            "outputs": {"type": "array", "items": _TENSOR},
                        },
                    }
                ),
                **_INFERENCE_ERRORS,
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
    paths.update(_repository_paths())
    paths.update(download_paths())
    paths.update(dashboard_paths())
    for suffix, params in (("{model}", [_MODEL]), ("{model}/versions/{version}", [_MODEL, _VERSION])):
        for path, item in (
            (f"/predict/{suffix}", predict),
            (f"/v2/models/{suffix}", metadata),
            (f"/v2/models/{suffix}/ready", ready),
            (f"/v2/models/{suffix}/infer", infer),
        ):
            paths[path] = {method: {**operation, "parameters": params} for method, operation in item.items()}
        predict_path = paths[f"/predict/{suffix}"]["post"]
        predict_path["parameters"] = [*predict_path["parameters"], _URL_QUERY]
        for path in (f"/predict/{suffix}", f"/v2/models/{suffix}/infer"):
            operation = paths[path]["post"]
            operation["parameters"] = [*operation["parameters"], _REQUEST_ID]
            operation["responses"]["200"] = {**operation["responses"]["200"], "headers": _ANSWER_HEADERS}
    _with_access_errors(paths)
    return {
        "openapi": "3.1.0",
        # Without --auth no key is needed ({}); with it, a key as a bearer token or in x-api-key.
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (modelbay keys)"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            }
        },
        "info": {
            "title": "modelbay",
            "version": __version__,
            "description": "Prediction service: a simple door and the Open Inference Protocol v2 (REST).",
        },
        "paths": paths,
    }


def _with_access_errors(paths: dict[str, Any]) -> None:
    """Every operation may answer 401 (no valid key), 403 (a key of the wrong scope or model) and
    429 (the key's rate limit, with Retry-After) once the server runs with --auth."""
    for item in paths.values():
        for operation in item.values():
            for status in ("401", "403", "429"):
                operation["responses"].setdefault(status, _ERROR)


def _repository_paths() -> dict[str, Any]:
    """The OIP model repository extension (http/repository.py): loopback clients only (403)."""
    refusals = {"400": _ERROR, "403": _ERROR, "413": _ERROR}
    fields: dict[str, Any] = {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "state": {"enum": ["UNAVAILABLE", "LOADING", "READY", "UNLOADING", "FAILED"]},
        "reason": {"type": "string"},
    }
    row = {"type": "object", "properties": fields}
    parameters_body = {
        "type": "object",
        "properties": {
            "parameters": {
                "type": "object",
                "description": "load: config (a JSON object of modelbay.yaml fields, as a string) and "
                "file:<version>/<path> (a file's content in base64): a model sent with the load",
            }
        },
    }

    def change(summary: str, failure: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "tags": ["repository"],
                "parameters": [_MODEL],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": parameters_body}},
                },
                "responses": {"200": _json({"type": "object"}), **refusals, "404": _ERROR, **failure},
            }
        }

    return {
        "/v2/repository/index": {
            "post": {
                "summary": "OIP model repository index: every model version and its state",
                "tags": ["repository"],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
                        }
                    },
                },
                "responses": {"200": _json({"type": "array", "items": row}), **refusals},
            }
        },
        "/v2/repository/models/{model}/load": change(
            "Load (or reload) a model the server knows; 200 once it serves", {"500": _ERROR}
        ),
        "/v2/repository/models/{model}/unload": change("Unload a model once its requests are done", {}),
        "/v2/repository/models/{model}/default": {
            "post": {
                "summary": "Choose the version answering calls that name none (modelbay's own route)",
                "tags": ["repository"],
                "parameters": [_MODEL],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"version": {"type": ["string", "null"]}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                        }
                    ),
                    **refusals,
                    "404": _ERROR,
                },
            }
        },
        "/v2/repository/models/{model}/traffic": _traffic_path(refusals),
        "/v2/repository/models/{model}/versions/{version}/log": {
            "get": {
                "summary": "A version's state and the log lines of its last load (modelbay's own route)",
                "tags": ["repository"],
                "parameters": [_MODEL, _VERSION],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                **fields,
                                "lines": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    ),
                    "403": _ERROR,
                    "404": _ERROR,
                },
            }
        },
    }


def _traffic_path(refusals: dict[str, Any]) -> dict[str, Any]:
    """modelbay's own route for a model's traffic policy (registry/traffic.py): read it, set it."""

    def part(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"type": ["object", "null"], "description": description, "properties": properties, **extra}

    weight, text = {"type": "number", "minimum": 0}, {"type": "string"}
    split = part('weight per version (>= 0, summing to > 0), e.g. {"2": 90, "3": 10}', {})
    sticky = part(
        "with a split: callers with the same value of this header keep one version", {"header": text}
    )
    shadow = part(
        "also send percent of the calls to version in the background, never returned",
        {"version": text, "percent": {**weight, "maximum": 100}, "tolerance": weight},
    )
    policy = part(
        "a model's traffic policy for the calls that name no version; null: none",
        {
            "split": {**split, "additionalProperties": weight},
            "sticky": {**sticky, "required": ["header"], "additionalProperties": False},
            "shadow": {**shadow, "required": ["version"], "additionalProperties": False},
        },
        additionalProperties=False,
    )
    serving = {
        "split": part("percent per version loaded now; null: the default version answers", {}),
        "shadow": {"type": ["string", "null"]},
    }
    answer = {
        "type": "object",
        "properties": {"name": text, "traffic": policy, "serving": {"type": "object", "properties": serving}},
    }
    operation = {"tags": ["repository"], "parameters": [_MODEL]}
    return {
        "get": {
            **operation,
            "summary": "A model's traffic policy and how it applies now (modelbay's own route)",
            "responses": {"200": _json(answer), "403": _ERROR, "404": _ERROR},
        },
        "post": {
            **operation,
            "summary": "Set a model's traffic policy (null clears it), atomically (modelbay's own route)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": policy}}},
            "responses": {"200": _json(answer), **refusals, "404": _ERROR},
        },
    }
