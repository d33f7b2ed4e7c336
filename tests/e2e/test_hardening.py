"""Issue 9 against the real `modelbay serve`: draining on SIGTERM, slow and vanished clients,
the connection limit. Each of these hung or held resources on the code before the fix."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from modelbay.grpc.generated import grpc_predict_v2_pb2 as pb
from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import SAMPLES, free_port, modelbay_serve, serve_process

pytestmark = pytest.mark.e2e

# Sleeps the seconds each number asks for, echoes it; waits while the file `hang` exists.
SLOW_HANDLER = """
import time


def load(model_dir):
    return model_dir / "hang"


def predict(flag, inputs):
    for x in inputs:  # a JSON number, or a one-element array over OIP
        time.sleep(float(x.item() if hasattr(x, "item") else x))
    while flag.exists():
        time.sleep(0.02)
    return inputs
"""


@pytest.fixture
def slow_model(tmp_path: Path) -> Path:
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "predict.py").write_text(SLOW_HANDLER)
    (folder / "modelbay.yaml").write_text("batching: {max_batch_size: 1, max_queue_size: 4}\n")
    return folder


def post_json(url: str, value: object, timeout_s: float = 30.0) -> httpx.Response:
    return httpx.post(f"{url}/predict/slow", json={"input": value}, timeout=timeout_s)


def grpc_slow(port: int) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = pb.ModelInferRequest(model_name="slow")
        request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(5.0)
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK


def test_sigterm_finishes_what_it_can_then_answers_503_and_exits(slow_model: Path) -> None:
    grpc_port = free_port()
    args = (str(slow_model), "--graceful-timeout-s", "1.5", "--grpc-port", str(grpc_port))
    with serve_process(*args) as served, concurrent.futures.ThreadPoolExecutor(4) as pool:
        quick = pool.submit(post_json, served.url, 0.5)  # runs first, done within the drain deadline
        time.sleep(0.1)
        stuck = pool.submit(post_json, served.url, 20)  # queued behind it; would take 20 s
        over_grpc = pool.submit(grpc_slow, grpc_port)
        time.sleep(0.2)
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        assert quick.result().status_code == 200 and quick.result().json()["predictions"] == 0.5
        late = stuck.result()
        assert late.status_code == 503
        assert "server shut down before the model answered" in late.json()["error"]
        assert over_grpc.result() == grpc.StatusCode.UNAVAILABLE
        served.process.wait(timeout=15)
        took = time.monotonic() - signalled
    assert took < 10  # the drain deadline, not the 20 s model call, decides when it exits


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(scope="module")
def strict_server() -> Iterator[str]:
    """The digits model with a 1 s read timeout and room for 6 connections."""
    with modelbay_serve("--read-timeout-s", "1", "--max-connections", "6") as url:
        yield url


@pytest.mark.parametrize(
    "sent",
    [
        b"POST /predict/digits HTTP/1.1\r\nHost: x\r\nContent-Le",  # headers never finish
        b"POST /predict/digits HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",  # nor the body
        b"",  # a connection that never sends anything
    ],
)
def test_a_request_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    strict_server: str, sent: bytes
) -> None:
    port = int(strict_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        answer = read_until_closed(sock, timeout_s=10)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout") and b"read_timeout_s" in answer
    assert took < 5  # closed by the server, not by our 10 s timeout
    assert (
        httpx.post(f"{strict_server}/predict/digits", content=(SAMPLES / "7.png").read_bytes()).status_code
        == 200
    )


def test_headers_past_64_kib_get_431_and_the_connection_closes(strict_server: str) -> None:
    port = int(strict_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)  # unfinished
        answer = read_until_closed(sock, timeout_s=5)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert httpx.get(f"{strict_server}/v2/health/live").status_code == 200


def test_a_request_the_parser_cannot_read_gets_a_json_400(strict_server: str) -> None:
    port = int(strict_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        answer = read_until_closed(sock, timeout_s=5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head
    assert json.loads(body) == {"error": "malformed HTTP request: Invalid HTTP request received."}


def test_past_max_connections_a_request_gets_503_not_a_refused_connection(strict_server: str) -> None:
    port = int(strict_server.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_closed(sock, timeout_s=5).startswith(b"HTTP/1.1 503")
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{strict_server}/v2/health/live").status_code == 200


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for line in text.splitlines():
        if line.startswith('modelbay_queue_depth{model="slow"'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no modelbay_queue_depth for the slow model")


def test_requests_whose_client_left_leave_the_queue(slow_model: Path) -> None:
    flag = slow_model / "hang"
    flag.touch()  # the model hangs until the file goes
    with modelbay_serve(str(slow_model), "--timeout-s", "120") as url:
        port = int(url.rsplit(":", 1)[1])
        body = b'{"input": 0}'
        request = (
            b"POST /predict/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        clients = []
        for _ in range(5):  # one in the model, four queued: max_queue_size
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(request)
            clients.append(sock)
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while queue_depth(url) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue_depth(url) == 4
        for sock in clients:
            sock.close()
        deadline = time.monotonic() + 5
        while queue_depth(url) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queue_depth(url) == 0  # before the fix: 4 for good, and every new request 503
        flag.unlink()
        assert post_json(url, 0.01).json()["predictions"] == 0.01
