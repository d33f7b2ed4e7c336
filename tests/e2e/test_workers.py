"""`modelbay serve --workers 2`: two processes share the HTTP and gRPC ports; load errors still stop it."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from modelbay.client import Client
from tests.conftest import free_port, modelbay_serve, sample

ROW = [0.5, -1.0, 2.0, 0.0]


def test_two_workers_answer_over_http_and_grpc(tiny_files: dict[str, Path], tiny: torch.nn.Module) -> None:
    grpc_port = free_port()
    expected = tiny(torch.tensor([ROW])).detach().numpy()[0]
    with modelbay_serve(str(tiny_files["exported"]), "--workers", "2", "--grpc-port", str(grpc_port)) as url:

        def ask(_: int) -> list[float]:
            reply = httpx.post(f"{url}/predict/tiny", json={"input": ROW}, timeout=30)
            assert reply.status_code == 200
            return reply.json()["predictions"]  # type: ignore[no-any-return]

        with ThreadPoolExecutor(8) as pool:
            for prediction in pool.map(ask, range(40)):
                np.testing.assert_allclose(prediction, expected, rtol=1e-5)
        with Client(f"grpc://127.0.0.1:{grpc_port}") as client:
            for _ in range(4):
                out = client.infer("tiny", np.array([ROW], np.float32))["output"]
                np.testing.assert_allclose(out[0], expected, rtol=1e-5)


def test_workers_do_not_start_when_a_model_cannot_load(tiny_files: dict[str, Path]) -> None:
    command = [
        str(Path(sys.executable).parent / "modelbay"),
        "serve",
        str(tiny_files["state_dict"]),
        "--workers",
        "2",
        "--port",
        str(free_port()),
        "--grpc-port",
        "0",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pass --arch" in result.stderr


def test_metrics_of_any_worker_count_the_requests_of_all(tiny_files: dict[str, Path]) -> None:
    requests = 60
    with modelbay_serve(str(tiny_files["exported"]), "--workers", "2") as url:

        def ask(_: int) -> int:
            # A new connection per request: the kernel hands each to whichever worker accepts it.
            return httpx.post(f"{url}/predict/tiny", json={"input": ROW}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(ask, range(requests))) == {200}
        for _ in range(6):  # each scrape lands on either worker; every one must see all requests
            text = httpx.get(f"{url}/metrics", timeout=30).text
            labels = {"model": "tiny", "version": "1", "door": "predict"}
            assert sample(text, "modelbay_requests_total", **labels, status="success") == requests
            assert sample(text, "modelbay_request_duration_seconds_count", **labels) == requests
