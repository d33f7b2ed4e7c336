"""Every request of the corpus (tests/fuzz/corpus.py) against one real `modelbay serve`.

Each case must get its status (or gRPC code), an HTTP error must be an OIP error body
{"error": "..."}, no answer may carry the failing model's exception text, and afterwards the
server must still be running, live, and answer a good inference correctly (never poisoned: no
queue slot, thread or connection left taken), with its peak memory grown by less than
MAX_GROWTH_BYTES (sizes are checked before anything is allocated).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest

from modelbay.grpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.fuzz.conftest import READ_TIMEOUT_S, FuzzServer
from tests.fuzz.corpus import CASES, GOOD, INFER, Case

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT_S = 10.0  # far past any answer the corpus waits for (the slow model's timeout_s is 1 s)
MAX_GROWTH_BYTES = 256 * 1024 * 1024


@dataclass
class Answer:
    status: int | str | None  # HTTP status, gRPC code name, or None when the server sent nothing
    text: str


def send_http(case: Case, server: FuzzServer) -> Answer:
    request = case.request
    headers = dict(request["headers"])
    body = request["body"]
    if headers.pop("x-send", None) == "chunked":  # no Content-Length: the server counts as it reads
        body = iter([body[i : i + 65_536] for i in range(0, len(body), 65_536)])
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
        reply = client.request(request["method"], request["path"], headers=headers, content=body)
    if reply.status_code >= 400:
        error = reply.json().get("error")  # an OIP error body on every route
        assert isinstance(error, str), reply.text
    return Answer(reply.status_code, reply.text)


def send_grpc(case: Case, server: FuzzServer) -> Answer:
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(case.request, timeout=CLIENT_TIMEOUT_S)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
                raise AssertionError(
                    f"no answer within {CLIENT_TIMEOUT_S} s (the client's deadline)"
                ) from exc
            return Answer(code.name, details)
    return Answer("OK", "")


def send_raw(case: Case, server: FuzzServer) -> Answer:
    """Write the case's parts, then read until the server closes (a hang past the deadline fails)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT_S) as sock:
        for part in case.request["parts"]:
            if isinstance(part, float):
                time.sleep(part)
            else:
                sock.sendall(part)
        if case.request["leave"]:
            return Answer(None, "")
        received = b"".join(
            _until_closed(sock, deadline=time.monotonic() + READ_TIMEOUT_S + CLIENT_TIMEOUT_S)
        )
    if not received:
        return Answer(None, "")
    status_line = received.split(b"\r\n", 1)[0].decode("latin-1")
    return Answer(int(status_line.split()[1]), received.decode("latin-1"))


def _until_closed(sock: socket.socket, deadline: float) -> Iterator[bytes]:
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65_536)
        except TimeoutError:
            raise AssertionError("the server neither answered nor closed the connection") from None
        except ConnectionResetError:
            return
        if not chunk:
            return
        yield chunk


SEND = {"predict": send_http, "http": send_http, "binary": send_http, "grpc": send_grpc, "raw": send_raw}


def assert_still_serving(server: FuzzServer) -> None:
    assert server.alive(), f"the server exited:\n{server.log()[-4000:]}"
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
        assert client.get("/v2/health/live").status_code == 200
        reply = client.post(INFER, json={"inputs": GOOD})
    assert reply.status_code == 200, reply.text
    (output,) = reply.json()["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), server.expected_row, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_request(case: Case, fuzz_server: FuzzServer) -> None:
    peak = fuzz_server.peak_rss_bytes()
    answer = SEND[case.door](case, fuzz_server)
    assert answer.status in case.expect, f"{case.id}: got {answer.status}: {answer.text[:500]}"
    if case.body_has is not None:
        assert case.body_has in answer.text
    if case.body_lacks is not None:
        assert case.body_lacks not in answer.text
    assert_still_serving(fuzz_server)
    grown = fuzz_server.peak_rss_bytes() - peak
    assert grown < MAX_GROWTH_BYTES, f"{case.id}: peak RSS grew by {grown / 2**20:.0f} MiB"


def test_every_door_is_in_the_corpus() -> None:
    assert {case.door for case in CASES} == set(SEND)
    assert len({case.id for case in CASES}) == len(CASES)
