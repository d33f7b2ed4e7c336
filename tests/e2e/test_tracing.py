"""OpenTelemetry traces end to end: a real `modelbay serve --tracing` exports, with the SDK's OTLP/HTTP
exporter, to a real OTLP/HTTP receiver in this test, which decodes the protobuf with
opentelemetry-proto. A request over HTTP and one over gRPC (tritonclient), each with the client's
W3C traceparent, get one trace each with the phases as children; a model in a worker process adds its
`forward` span under the batch span. The same server logs JSON access lines."""

from __future__ import annotations

import contextlib
import http.server
import json
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import free_port, serve_process

pytestmark = pytest.mark.e2e
PHASES = {"decode", "preprocess", "queue_wait", "inference", "postprocess", "encode"}
ROW = [0.5, -1.0, 2.0, 0.25]


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: every POST /v1/traces decoded into its spans."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append(span)
                                receiver.resources.append(resource)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def trace(self, trace_id: str, names: set[str], timeout_s: float = 20.0) -> dict[str, list[Any]]:
        """The spans of trace `trace_id` by name, once every name of `names` has arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                found: dict[str, list[Any]] = {}
                for span in self.spans:
                    if span.trace_id.hex() == trace_id:
                        found.setdefault(span.name, []).append(span)
            if names <= found.keys() or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def attributes(span: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        values[attribute.key] = getattr(value, value.WhichOneof("value"))
    return values


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def check_request_trace(spans: dict[str, list[Any]], parent_span_id: str, model: str) -> Any:
    """The request's SERVER span is the client's span's child, every phase its child, the batch
    span linked to it; returns the batch span."""
    (root,) = [span for name, found in spans.items() for span in found if span.kind == span.SPAN_KIND_SERVER]
    assert root.parent_span_id.hex() == parent_span_id
    assert attributes(root)["model_name"] == model and attributes(root)["model_version"] == "1"
    assert attributes(root)["batch_size"] >= 1
    for phase in PHASES:
        (span,) = spans[phase]
        assert span.parent_span_id == root.span_id, phase
        assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= root.end_time_unix_nano, phase
    inference = attributes(spans["inference"][0])
    assert inference["model_name"] == model and inference["batch_size"] >= 1
    order = ["decode", "preprocess", "queue_wait", "inference", "postprocess", "encode"]
    starts = [spans[phase][0].start_time_unix_nano for phase in order]
    assert starts == sorted(starts)
    (batch,) = spans["batch"]
    assert root.span_id in {link.span_id for link in batch.links}
    assert batch.span_id in {link.span_id for link in spans["inference"][0].links}
    return batch


def test_a_request_over_http_and_grpc_is_one_trace_with_its_phases(
    tiny_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, manifest in (("tiny", ""), ("tiny_worker", "worker_process: true\n")):
        folder = tmp_path / name / "1"
        folder.mkdir(parents=True)
        shutil.copy(tiny_files["onnx"], folder / "model.onnx")
        (tmp_path / name / "modelbay.yaml").write_text(manifest + "batching: {max_queue_delay_ms: 5}\n")
    grpc_port = free_port()
    with receiving() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "digits-service")
        args = (
            str(tmp_path),
            "--tracing",
            "--log-format",
            "json",
            "--access-log",
            "--grpc-port",
            str(grpc_port),
        )
        with serve_process(*args) as served:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
            header, trace_id, span_id = traceparent()
            reply = httpx.post(
                f"{served.url}/v2/models/tiny/infer",
                json=body,
                headers={"traceparent": header, "x-request-id": "client-id-1"},
            )
            assert reply.status_code == 200 and reply.headers["x-request-id"] == "client-id-1"
            spans = receiver.trace(trace_id, PHASES | {"batch", "POST /v2/models/{model}/infer"})
            check_request_trace(spans, span_id, "tiny")
            assert attributes(spans["POST /v2/models/{model}/infer"][0])["http.response.status_code"] == 200

            header, trace_id, span_id = traceparent()
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.array([ROW], dtype=np.float32))
            result = client.infer("tiny_worker", [tensor], headers={"traceparent": header})
            assert result.as_numpy("y").shape == (1, 3)
            call = "inference.GRPCInferenceService/ModelInfer"
            spans = receiver.trace(trace_id, PHASES | {"batch", "forward", call})
            batch = check_request_trace(spans, span_id, "tiny_worker")
            (forward,) = spans["forward"]  # in the model's worker process, under the batch span
            assert forward.parent_span_id == batch.span_id
            index = receiver.spans.index(forward)
            assert receiver.resources[index]["modelbay.role"] == "model_worker"
            assert receiver.resources[index]["service.name"] == "digits-service"

            untraced = httpx.post(f"{served.url}/v2/models/tiny/infer", json=body)
            assert len(untraced.headers["x-request-id"]) == 16  # one made for it
            lines = [json.loads(line) for line in served.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "modelbay.access"]
    first = next(line for line in access if line["request_id"] == "client-id-1")
    assert first["model"] == "tiny" and first["version"] == "1" and first["status"] == 200
    assert first["protocol"] == "http" and first["call"] == "POST /v2/models/{model}/infer"
    assert first["batch_size"] == 1 and first["latency_ms"] > 0 and first["caller"] == "127.0.0.1"
    grpc_line = next(line for line in access if line["protocol"] == "grpc")
    assert grpc_line["model"] == "tiny_worker" and grpc_line["status"] == 0
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's lines are JSON too
