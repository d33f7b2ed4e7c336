"""schemathesis against the OpenAPI document a real `modelbay serve` serves at /openapi.json.

Every operation of the document gets generated requests, valid and invalid by the schema (the
document is loaded from the server, so a route or field it forgets is not fuzzed: keep it true).
The path parameters also draw from the served models' names and versions, so that bodies reach
the codecs and the models instead of stopping at 404. Each response must:
  - not be a 5xx (none of the models fuzzed here fails: any 5xx is a server bug),
  - have a status, content type and body that the document lists for the operation,
  - come within REQUEST_TIMEOUT_S (a hang fails the test),
and the server must still be running after each one.

Bounded: MAX_EXAMPLES generated requests per operation, no shrinking, a fixed seed (the same
requests every run; change SEED to explore further).
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modelbay.http.openapi import openapi_document
from tests.fuzz.conftest import SECRET, FuzzServer

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 100
REQUEST_TIMEOUT_S = 10.0
SEED = 9
# Not "slow": each request to it takes timeout_s.
FUZZED_MODELS = ["digits", "tiny", "failing"]


def not_a_server_error_but_the_model(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """schemathesis' not_a_server_error, except the 500 of the model that always fails; and that 500
    names an error id and never the model's exception text (nor does any other answer)."""
    assert SECRET not in response.text, f"the model's exception text reached the client: {response.text}"
    if response.status_code == 500 and case.path_parameters.get("model") == "failing":
        assert "error id" in response.text, response.text
        return
    not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_but_the_model,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def aim_at_served_models(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with {model} and {version} drawn from the served names as often as from any string
    (not for the model repository's load and unload)."""
    aimed = copy.deepcopy(document)
    choices = {"model": FUZZED_MODELS, "version": ["1"]}
    for path, item in aimed["paths"].items():
        if path.startswith("/v2/repository/"):
            continue  # load and unload by random names only: unloading a served model would end the fuzz
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in choices:
                    parameter["schema"] = {
                        "anyOf": [{"enum": choices[parameter["name"]]}, parameter["schema"]]
                    }
    return aimed


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "request-timeout": REQUEST_TIMEOUT_S,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "no-shrink": True, "database": "none"},
    }
)
# Built from the same function the server serves (tested below to be what /openapi.json says), so
# pytest can collect one test per operation before any server runs.
schema = schemathesis.openapi.from_dict(aim_at_served_models(openapi_document()), config=CONFIG)


def test_the_fuzzed_document_is_the_served_one(fuzz_server: FuzzServer) -> None:
    assert httpx.get(f"{fuzz_server.url}/openapi.json", timeout=10).json() == openapi_document()


@schema.parametrize()
def test_generated_requests(case: schemathesis.Case, fuzz_server: FuzzServer) -> None:
    response = case.call(base_url=fuzz_server.url, timeout=REQUEST_TIMEOUT_S)
    assert fuzz_server.alive(), f"the server exited:\n{fuzz_server.log()[-4000:]}"
    case.validate_response(response, checks=CHECKS)
