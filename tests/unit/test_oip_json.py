"""OIP JSON tensors: strict conversion, clear errors, faithful responses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelbay.codecs.oip_json import array_from_json, decode_request, encode_response
from modelbay.errors import InvalidInput
from modelbay.types import DATATYPES, InferenceResponse


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d not in ("BYTES", "BOOL")])
def test_every_numeric_datatype_round_trips(datatype: str) -> None:
    array = array_from_json([[0, 1, 2], [3, 4, 5]], datatype, [2, 3], "x")
    assert array.dtype == DATATYPES[datatype] and array.shape == (2, 3)
    body = json.loads(encode_response(InferenceResponse("m", "1", {"y": array}))[0])
    assert body["outputs"] == [
        {"name": "y", "datatype": datatype, "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}
    ]


def test_bool_and_bytes() -> None:
    flags = array_from_json([True, False], "BOOL", [2], "f")
    assert flags.dtype == np.bool_ and flags.tolist() == [True, False]
    words = array_from_json(["héllo", "w"], "BYTES", [2, 1], "w")
    assert words.shape == (2, 1) and words[0, 0] == "héllo".encode()
    body = json.loads(encode_response(InferenceResponse("m", "1", {"w": words}))[0])
    assert body["outputs"][0]["data"] == ["héllo", "w"]


def test_flat_and_nested_data_are_the_same_tensor() -> None:
    flat = array_from_json([1, 2, 3, 4], "FP32", [2, 2], "x")
    nested = array_from_json([[1, 2], [3, 4]], "FP32", [2, 2], "x")
    np.testing.assert_array_equal(flat, nested)


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        (
            [1.5],
            "INT64",
            [1],
            "input 'x': INT64 data must hold integers from -9223372036854775808 to 9223372036854775807: "
            "Expected `int",
        ),
        ([1, 0], "BOOL", [2], "input 'x': BOOL data must hold booleans: Expected `bool"),
        (
            [1.0, True],
            "FP32",
            [2],
            "input 'x': FP32 data must hold numbers from -3.40282e+38 to 3.40282e+38: Expected `float",
        ),
        (
            [[0.5], [False]],
            "FP64",
            [2, 1],
            "input 'x': FP64 data must hold numbers from -1.79769e+308 to 1.79769e+308: Expected `float",
        ),
        (
            [1e39],
            "FP32",
            [1],
            "input 'x': FP32 data must hold numbers from -3.40282e+38 to 3.40282e+38: "
            "Expected `float` <= 3.40282346",
        ),
        (
            [-70000],
            "FP16",
            [1],
            "input 'x': FP16 data must hold numbers from -65504 to 65504: Expected `float` >= -65504.0",
        ),
        ([], "FP32", [2**63 - 1, 0], f"input 'x': shape [{2**63 - 1}, 0] has more than"),
        ([1], "FP32", [1] * 33, "input 'x': shape has 33 dimensions; at most 32"),
        (
            [300],
            "UINT8",
            [1],
            "input 'x': UINT8 data must hold integers from 0 to 255: Expected `int` <= 255",
        ),
        (
            [-1],
            "UINT32",
            [1],
            "input 'x': UINT32 data must hold integers from 0 to 4294967295: Expected `int` >= 0",
        ),
        (
            ["a"],
            "FP32",
            [1],
            "input 'x': FP32 data must hold numbers from -3.40282e+38 to 3.40282e+38: Expected `float",
        ),
        ([1, 2], "BYTES", [2], "input 'x': BYTES data must hold strings: Expected `str"),
        ([1, 2, 3], "FP32", [2, 2], "input 'x': shape [2, 2] needs 4 elements, data has 3"),
        ([[1, 2], [3]], "FP32", [3], "input 'x': data is not a regular (non-ragged) array"),
        ([1], "FP32", [-1], "input 'x': shape [-1] has a negative dimension"),
        ([1], "FLOAT", [1], "unknown datatype 'FLOAT'; expected one of BOOL, UINT8"),
    ],
)
def test_bad_tensor_data_is_refused_with_what_was_wrong(
    data: list, datatype: str, shape: list, message: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        array_from_json(data, datatype, shape, "x")
    assert err.value.message.startswith(message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "inference request is not valid JSON"),
        (b"[]", "invalid inference request: Expected `object`, got `array`"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}',
            "Object missing required field `datatype`",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": "1", "datatype": "FP32", "data": [1]}]}',
            "Expected `array`, got `str`",
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
            b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [2]}]}',
            "input 'x' appears twice in the request",
        ),
    ],
)
def test_malformed_requests_are_invalid_input(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("(", r"\(")):
        decode_request(body, "m", None)


def test_request_fields_are_kept() -> None:
    body = (
        b'{"id": "r1", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}],'
        b' "outputs": [{"name": "y"}]}'
    )
    request, binary = decode_request(body, "m", "2")
    assert not binary.wants("y")
    assert (request.model_name, request.model_version, request.id, request.outputs) == ("m", "2", "r1", ["y"])
    assert request.inputs["x"].dtype == np.float64
