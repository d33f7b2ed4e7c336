"""`GET /dashboard/api/summary` in-process: the served versions, their playground kind, and the
counters read back from the server's own metrics after real requests to the digits model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelbay.auth.keys import create_key
from modelbay.dashboard.summary import openapi_paths, version_counters
from modelbay.http.openapi import openapi_document
from modelbay.metrics import Metrics
from tests.conftest import SAMPLES, modelbay_serve
from tests.dashboard.test_load_log import live

pytestmark = pytest.mark.anyio
SCHEMA = openapi_paths()["/dashboard/api/summary"]["get"]["responses"]["200"]["content"]["application/json"]


def version(summary: dict, name: str, number: str = "1") -> dict:
    model = next(m for m in summary["models"] if m["name"] == name)
    return next(v for v in model["versions"] if v["version"] == number)


async def test_the_summary_counts_what_the_server_served(repository: Path) -> None:
    async with live(repository) as http:
        assert (await http.post("/v2/repository/models/digits-onnx/load")).status_code == 200
        for digit in "0127":
            reply = await http.post("/predict/digits", content=(SAMPLES / f"{digit}.png").read_bytes())
            assert reply.json()["predictions"][0]["label"] == digit
        assert (await http.post("/predict/digits", content=b"not an image")).status_code == 400
        zeros = {
            "inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 128}]
        }
        inputs = (await http.get("/v2/models/digits-onnx")).json()["inputs"]
        zeros["inputs"][0]["name"] = inputs[0]["name"]
        assert (await http.post("/v2/models/digits-onnx/infer", json=zeros)).status_code == 200

        reply = await http.get("/dashboard/api/summary")
        assert reply.status_code == 200
        summary = reply.json()
        assert jsonschema_rs.is_valid(SCHEMA["schema"], summary)
        assert [m["name"] for m in summary["models"]] == ["digits", "digits-onnx"]
        assert summary["repository_api"] == "open" and summary["model_control"] == "explicit"
        assert summary["changes_refused"] is None
        digits, onnx = version(summary, "digits"), version(summary, "digits-onnx")
        assert (digits["kind"], onnx["kind"]) == ("image", "tensor")
        assert digits["ready"] and digits["max_batch_size"] == 64 and digits["max_queue_delay_ms"] == 1.0
        counters = digits["counters"]
        assert counters["requests"] == 5 and counters["errors"] == 1
        buckets = counters["latency_buckets"]
        assert buckets[-1] == [None, 5] and [b for b, _ in buckets[:-1]] == sorted(b for b, _ in buckets[:-1])
        assert counters["batches"] == 4 and counters["batch_rows"] == 4  # the bad image never reached a batch
        assert counters["queue_depth"] == 0 and counters["cache_hits"] == counters["cache_misses"] == 0
        assert onnx["counters"]["requests"] == 1 and onnx["counters"]["batch_rows"] == 2
        assert "broken" not in [m["name"] for m in summary["models"]]  # never served


async def test_the_summary_says_who_may_use_the_repository_api(repository: Path, tmp_path: Path) -> None:
    async with live(repository, client=("10.1.2.3", 40000)) as http:
        assert (await http.get("/dashboard/api/summary")).json()["repository_api"] == "loopback only"
    keys = tmp_path / "keys.yaml"
    create_key(keys, "ops", ["admin"])
    async with live(repository, auth=str(keys)) as http:
        reply = await http.get("/dashboard/api/summary")  # open without a key, like /metrics
        assert reply.status_code == 200 and reply.json()["repository_api"] == "admin key"
    async with live(repository, auth=str(keys), auth_health=True) as http:
        assert (await http.get("/dashboard/api/summary")).status_code == 401


def test_counters_add_both_doors_and_leave_unknown_models_out() -> None:
    metrics = Metrics()
    bound = metrics.for_model("m", "2", lambda: 3.0)
    bound.on_request("predict", 0.004, None)
    bound.on_request("infer", 0.030, None)
    bound.on_request("infer", 0.030, ValueError("bad"))
    bound.on_batch(8, [0.001] * 8, 0.002)
    bound.cache_hit.inc(2)
    bound.cache_miss.inc()
    metrics.requests.labels("", "", "predict", "ModelNotFound").inc()
    counters = version_counters(metrics.collect())
    assert counters == version_counters(text_string_to_metric_families(metrics.render().decode()))
    assert list(counters) == [("m", "2")]
    found = counters[("m", "2")]
    assert (found["requests"], found["errors"], found["queue_depth"]) == (3, 1, 3)
    assert (found["batches"], found["batch_rows"], found["cache_hits"], found["cache_misses"]) == (1, 8, 2, 1)
    buckets = dict((bound, count) for bound, count in found["latency_buckets"])
    assert (buckets[0.002], buckets[0.005], buckets[0.02], buckets[0.05], buckets[None]) == (0, 1, 1, 3, 3)


def test_the_api_document_lists_the_summary_and_the_load_log() -> None:
    paths = openapi_document()["paths"]
    assert "get" in paths["/dashboard/api/summary"]
    assert "get" in paths["/v2/repository/models/{model}/versions/{version}/log"]


@pytest.mark.e2e
def test_with_two_workers_either_one_sums_both(tmp_path: Path) -> None:
    """`modelbay serve --workers 2` (the built-in digits): whichever worker answers the summary
    counts every request, as /metrics does (prometheus-client's multiprocess mode)."""
    image = (SAMPLES / "3.png").read_bytes()
    with modelbay_serve("--workers", "2") as url:

        def ask(_: int) -> int:  # a new connection each: either worker may take it
            return httpx.post(f"{url}/predict/digits", content=image, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(ask, range(40))) == {200}
        for _ in range(6):
            summary = httpx.get(f"{url}/dashboard/api/summary", timeout=30).json()
            counters = version(summary, "digits")["counters"]
            assert counters["requests"] == 40 and counters["latency_buckets"][-1] == [None, 40]
            assert counters["batch_rows"] == 40 and summary["changes_refused"]
