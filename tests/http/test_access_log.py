"""Access log lines and request ids, in-process: one line per request with its id, model, version,
status, latency, batch size and caller (the API key's name, never the key); the client's
x-request-id is kept when safe and returned, else one is made; JSON lines parse."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from modelbay.auth.keys import create_key
from modelbay.errors import ModelLoadError
from modelbay.logs import ACCESS, JsonFormatter, request_id
from modelbay.server import Server, traces
from modelbay.settings import Settings
from tests.conftest import asgi_client

pytestmark = pytest.mark.anyio
ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.25]}]}


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == ACCESS.name]


async def test_one_access_line_per_request_with_its_id(
    tiny_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS.name)
    model = {"path": str(tiny_files["onnx"]), "name": "tiny"}
    server = Server(Settings(access_log=True, models=[model]))  # type: ignore[list-item]
    async with asgi_client(server) as client:
        kept = await client.post("/v2/models/tiny/infer", json=ROW, headers={"x-request-id": "order-42.a:b"})
        made = await client.post("/v2/models/tiny/infer", json=ROW, headers={"x-request-id": "bad id\n"})
        missing = await client.post("/v2/models/nope/infer", json=ROW)
        predicted = await client.post("/predict/tiny", json={"input": [0.5, -1.0, 2.0, 0.25]})
    assert kept.status_code == 200 and kept.headers["x-request-id"] == "order-42.a:b"
    assert made.status_code == 200 and made.headers["x-request-id"] != "bad id\n"
    assert len(made.headers["x-request-id"]) == 16
    assert missing.status_code == 404 and len(missing.headers["x-request-id"]) == 16
    assert predicted.status_code == 200
    records = lines(caplog)
    assert len(records) == 4
    fields = [record.access for record in records]  # type: ignore[attr-defined]
    assert [f["request_id"] for f in fields[:3]] == [
        "order-42.a:b",
        made.headers["x-request-id"],
        missing.headers["x-request-id"],
    ]
    assert [(f["model"], f["version"], f["status"]) for f in fields] == [
        ("tiny", "1", 200),
        ("tiny", "1", 200),
        ("nope", "", 404),
        ("tiny", "1", 200),
    ]
    assert fields[0]["batch_size"] == 1 and fields[2]["batch_size"] == 0
    assert fields[3]["call"] == "POST /predict/{model}" and fields[0]["protocol"] == "http"
    assert all(f["latency_ms"] > 0 for f in fields)
    text = records[0].getMessage()
    assert text.startswith("request_id=order-42.a:b protocol=http call=POST /v2/models/{model}/infer")
    assert "version=1 status=200" in text and "batch_size=1" in text
    parsed = json.loads(JsonFormatter().format(records[2]))
    assert parsed["logger"] == "modelbay.access" and parsed["level"] == "INFO"
    assert parsed["status"] == 404 and parsed["model"] == "nope" and parsed["time"].endswith("Z")


async def test_the_caller_is_the_key_name_never_the_key(
    tiny_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "keys.yaml"
    key, _ = create_key(path, "mobile-app", ["infer"])
    model = {"path": str(tiny_files["onnx"]), "name": "tiny"}
    server = Server(Settings(auth=str(path), access_log=True, models=[model]))  # type: ignore[list-item]
    async with asgi_client(server) as client:
        answered = await client.post("/v2/models/tiny/infer", json=ROW, headers={"x-api-key": key})
        refused = await client.post("/v2/models/tiny/infer", json=ROW)
    assert answered.status_code == 200 and refused.status_code == 401
    records = lines(caplog)
    assert records[0].access["caller"] == "mobile-app"  # type: ignore[attr-defined]
    assert all(key not in record.getMessage() for record in caplog.records)


async def test_no_access_lines_by_default(
    tiny_files: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = Server(Settings(models=[{"path": str(tiny_files["onnx"]), "name": "tiny"}]))  # type: ignore[list-item]
    async with asgi_client(server) as client:
        reply = await client.post("/v2/models/tiny/infer", json=ROW)
    assert reply.status_code == 200 and len(reply.headers["x-request-id"]) == 16  # an id all the same
    assert lines(caplog) == []


def test_configure_turns_access_lines_on_and_off() -> None:
    from modelbay import logs

    try:
        logs.configure("info", "text", access_log=False)
        assert not ACCESS.isEnabledFor(logging.INFO)
        logs.configure("info", "json", access_log=True)
        assert ACCESS.isEnabledFor(logging.INFO)
        assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    finally:
        logging.getLogger().handlers.clear()
        ACCESS.disabled = False


def test_request_ids() -> None:
    assert request_id("abc-123") == "abc-123"
    assert request_id("x" * 128) == "x" * 128
    for unsafe in ("", "x" * 129, "a b", "a\nb", "ä", '{"json":1}'):
        made = request_id(unsafe)
        assert made != unsafe and len(made) == 16 and int(made, 16) >= 0


def test_a_tracing_exporter_modelbay_does_not_ship_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ModelLoadError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        Server(Settings(tracing=True, grpc_port=0)).load()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert traces(Settings(tracing=False)) is None
    tracing = traces(Settings(tracing=True))
    assert tracing is not None
    tracing.shutdown()
